"""The sync_check stage: every clip's audio/video offset and confidence, found by the expert.

For each clip the expert embeds every valid audio window and every valid 5-frame face window;
for each shift o in -search..+search the mean cosine distance between audio window i and face
window i + o is computed over the windows both sides have (never padded). The clip's offset is
minus the best shift, so a positive offset means the audio lags the video (audio delayed by 5
frames -> offset +5); confidence is median minus minimum distance, as SyncNet's evaluation
defines it. Clips with |offset| > max_offset or confidence < min_confidence are excluded from
generator training.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import paths
from ..errors import PipelineError
from ..io import align
from ..io.store import Store
from ..runtime import threads, write_json_atomic, write_parquet_atomic
from .expert_io import load_expert

log = logging.getLogger("pipeline.sync_check")


@torch.no_grad()
def clip_embeddings(model, frames: np.ndarray, mel: np.ndarray, fps: float = 25.0, batch: int = 256):
    """Audio and face embeddings of every valid centre frame of one clip: (a [N, D], v [N, D])."""
    n = len(frames)
    valid = list(align.valid_frames(n, len(mel), fps))
    if not valid:
        raise ValueError(f"no valid window in a clip of {n} frames")
    lower = frames[:, frames.shape[1] // 2 :].transpose(0, 3, 1, 2).astype(np.float32) / 255.0  # [T, 3, H/2, W]
    faces = np.stack([lower[i - align.HALF : i + align.HALF + 1].reshape(-1, *lower.shape[2:]) for i in valid])
    mels = np.stack([mel[align.mel_window(i, n, len(mel), fps)].T[None] for i in valid])
    device = next(model.parameters()).device
    a_all, v_all = [], []
    for s in range(0, len(valid), batch):
        a, v = model(
            torch.from_numpy(mels[s : s + batch]).to(device), torch.from_numpy(faces[s : s + batch]).to(device)
        )
        a_all.append(a.float().cpu())
        v_all.append(v.float().cpu())
    return torch.cat(a_all).numpy(), torch.cat(v_all).numpy()


def offset_distances(a: np.ndarray, v: np.ndarray, search: int = 15, min_overlap: int = 3) -> np.ndarray:
    """Mean cosine distance between audio window i and face window i + o, for o = -search..search
    (nan where fewer than min_overlap windows overlap)."""
    n = len(a)
    out = np.full(2 * search + 1, np.nan)
    for k, o in enumerate(range(-search, search + 1)):
        i = np.arange(max(0, -o), min(n, n - o))
        if len(i) >= min_overlap:
            out[k] = float(np.mean(1.0 - (a[i] * v[i + o]).sum(1)))
    return out


def estimate_offset(dists: np.ndarray, search: int = 15) -> tuple[int, float, float]:
    """(offset, confidence, min distance): offset > 0 means the audio lags the video."""
    k = int(np.nanargmin(dists))
    shift = k - search
    return -shift, float(np.nanmedian(dists) - dists[k]), float(dists[k])


def run(view: dict, tracker=None) -> dict:
    ds = view["data"]["dataset"]
    cfg = view["sync_check"]
    expert_path = paths.model_dir("sync_expert") / "expert.pt"
    if not expert_path.is_file():
        raise PipelineError(f"{expert_path} not found: run train_sync_expert first")
    store_root = paths.processed_dir(ds)
    if not (store_root / "index.parquet").is_file():
        raise PipelineError(f"{store_root / 'index.parquet'} not found: run preprocessing first")
    torch.set_num_threads(threads())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_expert(expert_path, device)
    store = Store(store_root)
    rows = []
    from tqdm import tqdm

    for r in tqdm(store.index.itertuples(), total=len(store.index), desc="sync_check", unit="clip", disable=None):
        a, v = clip_embeddings(model, store.frames(r.clip_id), store.mel(r.clip_id))
        d = offset_distances(a, v, cfg["search"])
        offset, conf, dmin = estimate_offset(d, cfg["search"])
        reasons = []
        if abs(offset) > cfg["max_offset"]:
            reasons.append(f"|offset| {abs(offset)} > max_offset {cfg['max_offset']}")
        if conf < cfg["min_confidence"]:
            reasons.append(f"confidence {conf:.3f} < min_confidence {cfg['min_confidence']}")
        rows.append(
            {
                "clip_id": r.clip_id,
                "split": r.split,
                "offset": offset,
                "confidence": conf,
                "min_dist": dmin,
                "excluded": bool(reasons),
                "reason": "; ".join(reasons),
            }
        )
    table = pd.DataFrame(rows)
    out = paths.sync_check_dir(ds)
    out.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(table, out / "offsets.parquet")
    _histogram(table, out / "offsets_hist.png", cfg)
    metrics = {
        "clips": len(table),
        "excluded": int(table.excluded.sum()),
        "in_sync_fraction": float((table.offset == 0).mean()),
        "within_max_offset_fraction": float((table.offset.abs() <= cfg["max_offset"]).mean()),
        "median_confidence": float(table.confidence.median()),
    }
    for split in sorted(set(table.split)):
        metrics[f"excluded_{split}"] = int(table[table.split == split].excluded.sum())
    write_json_atomic(paths.metrics("sync_check"), metrics)
    if tracker is not None:
        tracker.log_artifact(out / "offsets_hist.png", "plots")
    return metrics


def _histogram(table: pd.DataFrame, path: Path, cfg: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    bins = np.arange(-cfg["search"] - 0.5, cfg["search"] + 1.5)
    ax1.hist(table.offset, bins=bins, color="#3a6ea5")
    ax1.axvspan(-cfg["max_offset"] - 0.5, cfg["max_offset"] + 0.5, color="#9bd39b", alpha=0.35, label="kept")
    ax1.set_xlabel("offset (frames; > 0: audio lags video)")
    ax1.set_ylabel("clips")
    ax1.legend()
    ax1.set_title(f"A/V offset of {len(table)} clips")
    ax2.hist(table.confidence, bins=30, color="#a55b3a")
    ax2.axvline(cfg["min_confidence"], color="k", ls="--", lw=1)
    ax2.set_xlabel("confidence (median - min distance)")
    ax2.set_title(f"{int(table.excluded.sum())} clips excluded")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
