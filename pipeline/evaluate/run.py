"""The evaluate stage (DESIGN §6): every system on the test split, protocol `reconstruction`.

All test clips are scored (the ones sync_check flags are counted, not dropped: the benchmark is
the split). Systems: `ground_truth` (the test crops themselves: the upper reference row every table needs,
since generated clips can score better than real ones on LSE), `composite` (the target's upper
half with the reference's lower half: a generator that ignores the audio), and every trained
generator variant. Each test clip is generated from its own audio with references from the same
clip (half a clip away). Per system: PSNR and SSIM of the crop and of the mouth region, LMD
(mediapipe lip points, crop pixels), and LSE-D / LSE-C on the system's video file (H.264 at
25 fps with the clip's audio), by SyncNet v2 when `evaluate.syncnet_v2` names the public
weights, else by the project's own expert; every output names the network.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import paths
from ..errors import PipelineError
from ..io import ffmpeg
from ..io.store import Store
from ..runtime import available_cores, write_json_atomic
from ..train.gen_report import composite
from . import generate as gen
from . import lse
from .landmarks import MouthLandmarks, lmd
from .metrics import mouth, psnr_frames, ssim_frames

log = logging.getLogger("pipeline.evaluate")
METRICS = ["psnr", "ssim", "psnr_mouth", "ssim_mouth", "lmd", "lse_d", "lse_c"]


def test_clips(view: dict, store: Store) -> tuple[pd.DataFrame, int]:
    """Every processed test clip (the benchmark is the split, not what our expert likes: clips
    sync_check flags are evaluated too and counted) with the manifest's video paths."""
    ds = view["data"]["dataset"]
    clips = store.index[store.index.split == "test"]
    table_path = paths.sync_check_dir(ds) / "offsets.parquet"
    excluded = 0
    if table_path.is_file():
        table = pd.read_parquet(table_path)
        excluded = int(clips.clip_id.isin(set(table.clip_id[table.excluded])).sum())
    manifest = pd.read_parquet(paths.manifest(ds))[["clip_id", "video_path"]]
    clips = clips.merge(manifest, on="clip_id", how="left").reset_index(drop=True)
    limit = view["evaluate"]["max_clips"]
    if limit:
        clips = clips.head(limit)
    if clips.empty:
        raise PipelineError(f"no test clip to evaluate in {paths.processed_dir(ds)}")
    return clips, excluded


def clip_audio(row, raw_root: Path | None) -> np.ndarray:
    """The clip's 16 kHz mono audio, cut or padded to its frames (25 fps)."""
    path = Path(row.video_path)
    if not path.is_absolute() and raw_root is not None and not path.exists():
        path = raw_root / path
    wav = ffmpeg.read_audio(path, 16000)
    n = int(row.n_frames) * 640
    return np.pad(wav, (0, max(0, n - len(wav))))[:n].astype(np.float32)


def systems_for(view: dict) -> dict[str, Path | None]:
    out: dict[str, Path | None] = {"ground_truth": None, "composite": None}
    for variant in view["generator"]["variants"]:
        p = paths.model_dir("generator") / variant / "generator.pt"
        if not p.is_file():
            raise PipelineError(f"{p} not found: run train_generator --variant {variant} first")
        out[variant] = p
    return out


def run(view: dict, tracker=None) -> dict:
    cfg = view["evaluate"]
    ds = view["data"]["dataset"]
    root = paths.processed_dir(ds)
    if not (root / "index.parquet").is_file():
        raise PipelineError(f"{root / 'index.parquet'} not found: run preprocessing first")
    torch.set_num_threads(available_cores())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    store = Store(root)
    clips, excluded = test_clips(view, store)
    systems = systems_for(view)
    models = {name: gen.load_generator(p, device) for name, p in systems.items() if p is not None}
    scorer = lse.make_scorer(cfg["syncnet_v2"], paths.model_dir("sync_expert") / "expert.pt", device,
                             search=cfg["lse_search"])
    marks = MouthLandmarks()
    rows = []
    out_dir = paths.eval_dir()
    tmp_out = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp_out, ignore_errors=True)
    (tmp_out / "samples").mkdir(parents=True)
    from tqdm import tqdm

    with tempfile.TemporaryDirectory() as tmp:
        for k, row in enumerate(tqdm(clips.itertuples(), total=len(clips), desc="evaluate", unit="clip", disable=None)):
            frames, mel = store.frames(row.clip_id), store.mel(row.clip_id)
            audio = clip_audio(row, paths.raw_dir(ds))
            refs = gen.reference_frames(frames)
            outputs = {"ground_truth": frames, "composite": composite(frames, refs)}
            for name, model in models.items():
                outputs[name] = gen.generate(model, frames, gen.mel_windows(len(frames), mel), refs)
            real_lips = marks.clip(frames)
            for name, fake in outputs.items():
                video = Path(tmp) / f"{name}-{k}.mp4"
                ffmpeg.write_mp4(video, fake, 25, audio, 16000)
                sync = scorer(video, mel)
                dist, used = lmd(marks.clip(fake), real_lips)
                rows.append({"clip_id": row.clip_id, "system": name, "psnr": float(np.mean(np.minimum(psnr_frames(fake, frames), 100))),
                             "ssim": float(ssim_frames(fake, frames).mean()),
                             "psnr_mouth": float(np.mean(np.minimum(psnr_frames(mouth(fake), mouth(frames)), 100))),
                             "ssim_mouth": float(ssim_frames(mouth(fake), mouth(frames)).mean()),
                             "lmd": dist, "lmd_frames": used, "lse_d": sync["min_dist"], "lse_c": sync["confidence"],
                             "offset": sync["offset"]})
            if k < cfg["sample_videos"]:
                side = np.concatenate([outputs[n] for n in outputs], axis=2)
                ffmpeg.write_mp4(tmp_out / "samples" / f"{row.clip_id.replace('/', '_')}.mp4", side, 25, audio, 16000)
    per_clip = pd.DataFrame(rows)
    table = per_clip.groupby("system", sort=False)[METRICS + ["offset", "lmd_frames"]].mean()
    table["offset_abs"] = per_clip.assign(o=per_clip.offset.abs()).groupby("system", sort=False).o.mean()
    table["clips"] = per_clip.groupby("system", sort=False).size()
    table["lse_network"] = scorer.network
    table.reset_index().to_csv(tmp_out / "eval_table.csv", index=False, float_format="%.4f")
    per_clip.to_csv(tmp_out / "per_clip.csv", index=False, float_format="%.4f")
    (tmp_out / "systems.txt").write_text(
        f"systems in column order of the sample videos: {' | '.join(outputs)}\n"
        f"LSE network: {scorer.network}\nLMD landmarks: mediapipe face mesh, 40 lip points, crop pixels\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp_out, out_dir)
    metrics = {"clips": len(clips), "flagged_by_sync_check": excluded, "lse_network": scorer.network}
    for system, r in table.iterrows():
        for m in METRICS + ["offset_abs"]:  # null where undefined (LMD: no face found in the output)
            metrics[f"{system}_{m}"] = float(r[m]) if np.isfinite(r[m]) else None
    write_json_atomic(paths.metrics("evaluate"), metrics)
    if tracker is not None:
        tracker.set_tags({"lse_network": scorer.network, **{f"evaluates.{n}": _run_id(p) for n, p in systems.items() if p}})
        tracker.log_artifact(out_dir / "eval_table.csv", "eval")
        for f in sorted((out_dir / "samples").glob("*.mp4")):
            tracker.log_artifact(f, "eval/samples")
    log.info("evaluation table (%s for LSE):\n%s", scorer.network, table.to_string(float_format=lambda v: f"{v:.3f}"))
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def _run_id(model_path: Path) -> str:
    state = torch.load(model_path, map_location="cpu", weights_only=False)
    return str(state.get("mlflow_run_id") or "none")
