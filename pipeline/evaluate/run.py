"""The evaluate stage (docs/design.md §6): every system on the test split, protocols `reconstruction` and
`cross_audio`.

All test clips are scored (the ones sync_check flags are counted, not dropped: the benchmark is
the split). Systems: `ground_truth` (the test crops themselves: the upper reference row every table needs,
since generated clips can score better than real ones on LSE), `composite` (the target's upper
half with the reference's lower half: a generator that ignores the audio), and every trained
generator variant. Each test clip is generated from its own audio with references from the same
clip (half a clip away). Per system: PSNR and SSIM of the crop and of the mouth region, LMD
(mediapipe lip points, crop pixels), the mouth region's sharpness (variance of the Laplacian,
pipeline.nets.metrics: no reference needed), FID against the ground truth's frames (whole crop
and mouth region, over every test clip's frames, when `evaluate.inception` gives FID's Inception
weights; else not computed, and the log says so) and LSE-D / LSE-C on the system's video file (H.264 at
25 fps with the clip's audio), by SyncNet v2 when `evaluate.syncnet_v2` names the public
weights, else by the project's own expert; every output names the network.

Protocol `cross_audio` (when `evaluate.pairs` is set): each pair's face clip driven by another
clip's speech, as Wav2Lip's LRS2 test pairs (a file of `AUDIO_CLIP VIDEO_CLIP` lines, Wav2Lip's
order; `auto` pairs every test clip with the next one's audio). There is no ground truth for
such a video, so only LSE-D/LSE-C and the mouth's sharpness are measured; the `ground_truth` row
is the untouched face clip with the foreign audio (what no lip-sync scores) and `composite` the
reference-mouth copy. Both clips are cut to the shorter one.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import paths, tracking
from ..errors import PipelineError
from ..io.store import Store
from ..models.inception import WEIGHTS_FILE, load_fid_inception
from ..nets.expert import load_expert
from ..nets.generate import load_generator
from ..nets.metrics import frechet_distance
from ..runtime import atomic_folder, threads, write_json_atomic
from ..runtime import workers as runtime_workers
from ..stages import StageContext
from . import lse
from .scoring import FID_KEYS, score_all

log = logging.getLogger("pipeline.evaluate")
METRICS = ["psnr", "ssim", "psnr_mouth", "ssim_mouth", "lmd", "sharpness_mouth", "lse_d", "lse_c"]
CROSS_METRICS = ["sharpness_mouth", "lse_d", "lse_c"]
FID_METRICS = ("fid", "fid_mouth")  # with evaluate.inception


def cross_pairs(spec: str | None, store: Store, clips: pd.DataFrame) -> list[tuple[str, str]]:
    """(audio clip id, video clip id) pairs of the cross_audio protocol; checked before any work.
    A pair file names clips by their clip_id or by its tail (Wav2Lip's `6339758276407584924/00098`
    is our `main/6339758276407584924/00098`)."""
    if spec is None:
        return []
    ids = list(clips.clip_id)
    if spec == "auto":
        if len(ids) < 2:
            raise PipelineError("evaluate.pairs: auto needs at least 2 test clips to pair")
        return [(ids[(i + 1) % len(ids)], ids[i]) for i in range(len(ids))]
    path = Path(spec)
    if not path.is_file():
        raise PipelineError(f"evaluate.pairs: {path} not found (a file of 'AUDIO_CLIP VIDEO_CLIP' lines, or auto)")
    known = set(store.index.clip_id)
    by_tail: dict[str, list[str]] = {}
    for cid in known:
        parts = cid.split("/")
        for k in range(1, len(parts)):
            by_tail.setdefault("/".join(parts[k:]), []).append(cid)

    def resolve(token: str) -> str | None:
        if token in known:
            return token
        hits = by_tail.get(token, [])
        return hits[0] if len(hits) == 1 else None

    pairs, bad = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#")[0].strip()
        if not line:
            continue
        tokens = line.split()
        if len(tokens) != 2:
            raise PipelineError(f"{path}:{n}: expected 'AUDIO_CLIP VIDEO_CLIP', got {line!r}")
        got = [resolve(t) for t in tokens]
        if None in got:
            bad.append(f"{path}:{n}: " + ", ".join(t for t, g in zip(tokens, got) if g is None))
        else:
            pairs.append((got[0], got[1]))
    if bad:
        raise PipelineError(
            f"{len(bad)} line(s) of {path} name clips that are not in {store.root} "
            f"(or match several):\n  " + "\n  ".join(bad[:10])
        )
    if not pairs:
        raise PipelineError(f"{path} holds no pairs")
    return pairs


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


def systems_for(view: dict) -> dict[str, Path | None]:
    out: dict[str, Path | None] = {"ground_truth": None, "composite": None}
    for variant in view["generator"]["variants"]:
        p = paths.model_dir("generator") / variant / "generator.pt"
        if not p.is_file():
            raise PipelineError(f"{p} not found: run train_generator --variant {variant} first")
        out[variant] = p
    return out


def run(view: dict, ctx: StageContext) -> dict:
    tracker = ctx.tracker
    cfg = view["evaluate"]
    ds = view["data"]["dataset"]
    root = paths.processed_dir(ds)
    if not (root / "index.parquet").is_file():
        raise PipelineError(f"{root / 'index.parquet'} not found: run preprocessing first")
    torch.set_num_threads(threads())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    store = Store(root)
    clips, excluded = test_clips(view, store)
    pairs = cross_pairs(cfg["pairs"], store, clips)
    systems = systems_for(view)
    scorer_args = (cfg["syncnet_v2"], paths.model_dir("sync_expert") / "expert.pt", device, cfg["lse_search"])
    scorer = lse.make_scorer(*scorer_args)  # here too: a missing or bad network stops the stage before any work
    inception = Path(cfg["inception"]) if cfg["inception"] else None
    if inception is not None:
        load_fid_inception(inception)  # a missing or wrong weights file stops the stage before any work
    else:
        log.info(
            "evaluate: FID not computed: evaluate.inception names no weights file (pytorch-fid's %s)", WEIGHTS_FILE
        )
    out_dir = paths.eval_dir()
    with atomic_folder(out_dir) as tmp_out:
        (tmp_out / "samples").mkdir(parents=True)
        workers = min(runtime_workers(cfg["workers"]), len(clips) + len(pairs)) if device.type == "cpu" else 1
        rows, cross_rows = score_all(
            ds, store, clips, pairs, systems, scorer_args, tmp_out / "samples", cfg["sample_videos"], workers, inception
        )
        fid = fid_table(rows) if inception is not None else None
        log.info("evaluate: %d clips and %d cross_audio pairs in %d process(es)", len(clips), len(pairs), workers)
        per_clip = pd.DataFrame(rows)
        table = per_clip.groupby("system", sort=False)[METRICS + ["offset", "lmd_frames"]].mean()
        if fid is not None:
            table = table.join(fid)
        table["offset_abs"] = per_clip.assign(o=per_clip.offset.abs()).groupby("system", sort=False).o.mean()
        table["clips"] = per_clip.groupby("system", sort=False).size()
        table["lse_network"] = scorer.network
        table.reset_index().to_csv(tmp_out / "eval_table.csv", index=False, float_format="%.4f")
        per_clip.to_csv(tmp_out / "per_clip.csv", index=False, float_format="%.4f")
        cross_table = None
        if cross_rows:
            cross = pd.DataFrame(cross_rows)
            cross.to_csv(tmp_out / "per_pair_cross_audio.csv", index=False, float_format="%.4f")
            cross_table = cross.groupby("system", sort=False)[CROSS_METRICS + ["offset"]].mean()
            cross_table["offset_abs"] = cross.assign(o=cross.offset.abs()).groupby("system", sort=False).o.mean()
            cross_table["pairs"] = cross.groupby("system", sort=False).size()
            cross_table["lse_network"] = scorer.network
            cross_table.reset_index().to_csv(tmp_out / "eval_table_cross_audio.csv", index=False, float_format="%.4f")
        (tmp_out / "systems.txt").write_text(
            f"systems in column order of the sample videos: {' | '.join(systems)}\n"
            f"LSE network: {scorer.network}\nLMD landmarks: mediapipe face mesh, 40 lip points, crop pixels\n"
        )
        memory = None
        if systems.get("memory") is not None:
            memory = analyse_memory(view, store, systems["memory"], tmp_out / "memory")
    write_json_atomic(
        paths.metrics("memory"),
        memory if memory is not None else {"skipped": "generator.variants has no memory variant"},
    )
    metrics = {"clips": len(clips), "flagged_by_sync_check": excluded, "lse_network": scorer.network}
    shown = METRICS + ["offset_abs"] + (list(FID_METRICS) if fid is not None else [])
    for system, r in table.iterrows():
        for m in shown:  # null where undefined (LMD: no face found in the output)
            metrics[f"{system}_{m}"] = float(r[m]) if np.isfinite(r[m]) else None
    if cross_table is not None:
        metrics["cross_audio_pairs"] = len(pairs)
        for system, r in cross_table.iterrows():
            for m in CROSS_METRICS + ["offset_abs"]:
                metrics[f"cross_audio_{system}_{m}"] = float(r[m]) if np.isfinite(r[m]) else None
    write_json_atomic(paths.metrics("evaluate"), metrics)
    if tracker is not None:
        tracker.set_tags(
            {"lse_network": scorer.network, **{f"evaluates.{n}": _run_id(p) for n, p in systems.items() if p}}
        )
        tracker.log_artifact(out_dir / "eval_table.csv", "eval")
        for f in sorted((out_dir / "samples").glob("*.mp4")):
            tracker.log_artifact(f, "eval/samples")
        if memory is not None:
            tracker.log_metrics(
                {f"memory.{k}": v for k, v in memory.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            )
            for f in sorted((out_dir / "memory").glob("*.png")):
                tracker.log_artifact(f, "eval/memory")
    log.info("evaluation table (%s for LSE):\n%s", scorer.network, table.to_string(float_format=lambda v: f"{v:.3f}"))
    if cross_table is not None:
        log.info("cross_audio (%d pairs):\n%s", len(pairs), cross_table.to_string(float_format=lambda v: f"{v:.3f}"))
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def fid_table(rows: list[dict]) -> pd.DataFrame:
    """FID of every system's frames against the ground truth's, over all test clips' frames, whole
    crop and mouth region (pipeline.nets.metrics). Takes the features out of the rows."""
    feats: dict[str, dict[str, list]] = {}
    for r in rows:
        for key, metric in zip(FID_KEYS, FID_METRICS):
            feats.setdefault(r["system"], {}).setdefault(metric, []).append(r.pop(key))
    truth = {m: np.concatenate(f) for m, f in feats["ground_truth"].items()}
    out = {
        system: {m: frechet_distance(np.concatenate(f), truth[m]) for m, f in by_metric.items()}
        for system, by_metric in feats.items()
    }
    return pd.DataFrame.from_dict(out, orient="index")


def split_clips(view: dict, store: Store, split: str) -> pd.DataFrame:
    """Every processed clip of `split` with the manifest's video paths."""
    ds = view["data"]["dataset"]
    clips = store.index[store.index.split == split]
    manifest = pd.read_parquet(paths.manifest(ds))[["clip_id", "video_path"]]
    return clips.merge(manifest, on="clip_id", how="left").reset_index(drop=True)


def analyse_memory(view: dict, store: Store, checkpoint: Path, out_dir: Path) -> dict:
    """The memory generator's causal test and address analysis on the val and test clips
    (evaluate/memory_analysis.py): metrics/memory.json and the heatmaps in reports/eval/memory/."""
    from . import memory_analysis

    raw = paths.raw_dir(view["data"]["dataset"])

    def video_path_of(row):
        p = Path(row.video_path)
        return p if p.is_absolute() or p.exists() else raw / p

    limit = min(n for n in (view["evaluate"]["max_clips"], view["evaluate"]["memory_clips"]) if n)
    splits = {s: split_clips(view, store, s) for s in ("val", "test")}
    # at most `limit` clips a split, spread over it (LRW's index is sorted by word)
    splits = {
        s: (c if len(c) <= limit else c.sample(limit, random_state=0).sort_index())
        for s, c in splits.items()
        if not c.empty
    }
    model = load_generator(checkpoint)
    expert = load_expert(paths.model_dir("sync_expert") / "expert.pt")
    started = time.time()
    metrics = memory_analysis.memory_report(model, expert, store, splits, video_path_of, out_dir)
    log.info(
        "memory analysis (%s) in %.1f s: %s",
        ", ".join(f"{s} {len(c)} clips" for s, c in splits.items()),
        time.time() - started,
        ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float) and not k.startswith("test_")),
    )
    return metrics


def _run_id(model_path: Path) -> str:
    """The MLflow run that trained this checkpoint (found by the file's content; checkpoints of
    earlier versions carry the run id inside)."""
    old = torch.load(model_path, map_location="cpu", weights_only=False).get("mlflow_run_id")
    return str(old) if old else tracking.run_of_model(model_path, "train_generator")
