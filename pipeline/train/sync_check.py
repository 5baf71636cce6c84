"""The sync_check stage: every clip's audio/video offset and confidence, found by the expert
(the offset search: pipeline.nets.sync). Clips with |offset| > max_offset or confidence <
min_confidence are excluded from generator training.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import paths
from ..errors import PipelineError
from ..io.store import Store
from ..nets.expert import load_expert
from ..nets.sync import UNCERTAIN_GAP, clip_embeddings, estimate_offset, offset_distances, rival_gap
from ..runtime import atomic_file, threads, write_json_atomic, write_parquet_atomic
from ..stages import StageContext

log = logging.getLogger("pipeline.sync_check")


def run(view: dict, ctx: StageContext) -> dict:
    tracker = ctx.tracker
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
                "rival_gap": rival_gap(d),
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
        "uncertain_fraction": float((table.rival_gap < UNCERTAIN_GAP).mean()),
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
    with atomic_file(path, keep_suffix=True) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
