"""The index stage: probe every clip in parallel and write the manifest and the rejects table.

Manifest (data/manifests/<dataset>.parquet), one row per usable clip: clip_id, dataset, split,
word, speaker, text, video_path, n_frames, fps, duration_s, has_audio, sha1, width, height,
audio_rate, needs_resample. Rejects (<dataset>_rejects.parquet): clip_id, split, video_path,
reason. Unreadable, audio-less and too-short clips, and clips whose header and decoded frame
counts disagree, are rejected; clips at another frame rate are kept and marked for resampling.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
from pathlib import Path

import pandas as pd

from .. import paths
from ..errors import PipelineError
from ..io.ffmpeg import probe
from ..runtime import sha1_file, workers, write_json_atomic, write_parquet_atomic
from ..stages import StageContext
from .layouts import ClipRef, iter_clips, parse_txt

log = logging.getLogger("pipeline.index")

MANIFEST_COLUMNS = [
    "clip_id",
    "dataset",
    "split",
    "word",
    "speaker",
    "text",
    "video_path",
    "n_frames",
    "fps",
    "duration_s",
    "has_audio",
    "sha1",
    "width",
    "height",
    "audio_rate",
    "needs_resample",
]
REJECT_COLUMNS = ["clip_id", "split", "video_path", "reason"]


def load_source(dataset: str) -> dict:
    record = paths.source_record(dataset)
    if not record.is_file():
        raise PipelineError(f"{record} not found: run the acquire stage first (python -m pipeline acquire)")
    return json.loads(record.read_text())


def examine(ref: ClipRef, dataset: str, cfg: dict) -> tuple[str, dict]:
    """('ok', manifest row) or ('reject', reject row) for one clip."""

    def reject(reason: str):
        return "reject", {"clip_id": ref.clip_id, "split": ref.split, "video_path": ref.video_path, "reason": reason}

    info = probe(ref.video_path, decode=cfg["decode_check"])
    if not info.readable:
        return reject(f"unreadable: {info.error}")
    if not info.has_audio:
        return reject("no audio stream")
    n = info.decoded_frames if info.decoded_frames is not None else info.header_frames
    if cfg["decode_check"] and info.header_frames is not None and info.decoded_frames != info.header_frames:
        return reject(f"frame-count mismatch: header {info.header_frames}, decoded {info.decoded_frames}")
    if n is None or n < cfg["min_frames"]:
        return reject(f"too short: {n} frames < min_frames {cfg['min_frames']}")
    text = parse_txt(ref.txt_path).get("Text", "") if Path(ref.txt_path).is_file() else ""
    row = {
        "clip_id": ref.clip_id,
        "dataset": dataset,
        "split": ref.split,
        "word": ref.word,
        "speaker": ref.speaker,
        "text": text,
        "video_path": ref.video_path,
        "n_frames": int(n),
        "fps": float(info.fps or 0),
        "duration_s": float(info.duration_s or 0),
        "has_audio": True,
        "sha1": sha1_file(ref.video_path),
        "width": info.width,
        "height": info.height,
        "audio_rate": info.audio_rate,
        "needs_resample": bool(abs((info.fps or 0) - cfg["expected_fps"]) > 0.01),
    }
    return "ok", row


def _examine_star(args):
    return examine(*args)


def run(view: dict, ctx: StageContext) -> dict:
    dataset = view["data"]["dataset"]
    cfg = view["index"]
    source = load_source(dataset)
    refs = list(
        iter_clips(source["layout"], source["root"], source.get("include_pretrain", False), source.get("splits"))
    )
    if not refs:
        raise PipelineError(f"no clips found under {source['root']} ({source['layout']} layout)")
    n_workers = min(workers(cfg["workers"]), len(refs))
    from tqdm import tqdm

    rows, rejects = [], []
    jobs = [(r, dataset, cfg) for r in refs]
    with tqdm(total=len(jobs), desc=f"index {dataset}", unit="clip", disable=None) as bar:
        if n_workers > 1:
            with mp.get_context("fork").Pool(n_workers) as pool:
                results = pool.imap(_examine_star, jobs, chunksize=max(1, min(64, len(jobs) // (8 * n_workers))))
                for kind, row in results:
                    (rows if kind == "ok" else rejects).append(row)
                    bar.update(1)
        else:
            for job in jobs:
                kind, row = _examine_star(job)
                (rows if kind == "ok" else rejects).append(row)
                bar.update(1)
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    rej = pd.DataFrame(rejects, columns=REJECT_COLUMNS)
    for r in rejects[:20]:
        log.warning("rejected %s: %s", r["clip_id"], r["reason"])
    write_parquet_atomic(rej, paths.rejects(dataset))
    write_parquet_atomic(manifest, paths.manifest(dataset))
    counts = {
        "clips": len(manifest),
        "rejected": len(rej),
        "needs_resample": int(manifest["needs_resample"].sum()) if len(manifest) else 0,
    }
    for split in sorted(set(manifest["split"])):
        counts[f"clips_{split}"] = int((manifest["split"] == split).sum())
    write_json_atomic(paths.metrics("index"), counts)
    return counts
