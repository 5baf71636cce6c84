"""The gather stage: one index over all shards (random access of any clip's frames) and one
table of every rejected clip with its reason; checksums verified, counts as metrics."""

from __future__ import annotations

import json
import logging

import pandas as pd

from .. import paths
from ..errors import PipelineError
from ..io.store import verify_shard
from ..runtime import write_json_atomic, write_parquet_atomic
from ..stages import StageContext

log = logging.getLogger("pipeline.gather")


def run(view: dict, ctx: StageContext) -> dict:
    dataset = view["data"]["dataset"]
    cfg = view["preprocess"]
    parts, fails = [], []
    frames = 0
    for k in cfg["shards"]:
        shard = paths.processed_shard(dataset, k)
        if not (shard / "meta.json").is_file():
            raise PipelineError(f"{shard} is missing or incomplete: run `python -m pipeline preprocess --shard {k}`")
        if cfg["verify_checksums"]:
            try:
                verify_shard(shard)
            except ValueError as exc:
                raise PipelineError(str(exc)) from None
        meta = json.loads((shard / "meta.json").read_text())
        if meta["size"] != cfg["img_size"] or meta["storage"] != cfg["storage"]:
            raise PipelineError(
                f"{shard} was made with size {meta['size']}/{meta['storage']}, params say "
                f"{cfg['img_size']}/{cfg['storage']}: re-run preprocessing"
            )
        clips = pd.read_parquet(shard / "clips.parquet")
        clips["shard"] = k
        parts.append(clips)
        f = pd.read_parquet(shard / "failures.parquet")
        f["shard"] = k
        fails.append(f)
        frames += meta["frames"]
    index = pd.concat(parts, ignore_index=True).sort_values("clip_id", ignore_index=True) if parts else pd.DataFrame()
    for f in fails:
        f["stage"] = "preprocess"
    rejects_path = paths.rejects(dataset)
    if rejects_path.is_file():  # clips the index stage already refused: every skipped clip in one table
        rejected = pd.read_parquet(rejects_path)[["clip_id", "split", "reason"]]
        rejected["stage"] = "index"
        fails.append(rejected)
    failures = pd.concat(fails, ignore_index=True).sort_values("clip_id", ignore_index=True)
    write_parquet_atomic(failures, paths.processed_failures(dataset))
    write_parquet_atomic(index, paths.processed_index(dataset))
    reasons = failures["reason"].str.split(":").str[0].value_counts().to_dict() if len(failures) else {}
    metrics = {
        "clips": len(index),
        "rejected": len(failures),
        "rejected_by_index": int((failures["stage"] == "index").sum()) if len(failures) else 0,
        "frames": int(frames),
        "multi_face_clips": int(index["multi_face"].sum()) if len(index) else 0,
        "resampled_clips": int(index["resampled"].sum()) if len(index) else 0,
        "trimmed_clips": int(index["trimmed"].sum()) if len(index) else 0,
        **{f"rejected.{k.replace(' ', '_')}": int(v) for k, v in reasons.items()},
    }
    for split in sorted(set(index["split"])) if len(index) else []:
        metrics[f"clips_{split}"] = int((index["split"] == split).sum())
    write_json_atomic(paths.metrics("gather"), metrics)
    return metrics
