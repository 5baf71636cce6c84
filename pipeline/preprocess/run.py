"""The preprocess stage (one job per shard): faces, aligned crops, mel, alignment, the store.

Every clip of the shard is decoded (resampled to 25 fps when it is not), tracked with the face
mesh, cropped, and its audio turned into the mel spectrogram. One bad clip never stops the
stage: it is recorded with its reason, and the stage fails only when the shard's rejected
fraction exceeds `preprocess.max_reject_fraction`. Finished clips are kept under
work/preprocess/<fingerprint>/shard-<k>/ so that a killed job redoes only unfinished clips;
the shard folder is written under a temporary name and renamed at the end.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .. import paths
from ..errors import PipelineError
from ..io import audio as audio_io
from ..io import ffmpeg, store
from ..runtime import atomic_file, fingerprint, workers
from ..stages import StageContext, code_files
from . import crops, faces

log = logging.getLogger("pipeline.preprocess")
SAMPLES_PER_FRAME = audio_io.SAMPLE_RATE // 25  # 640
# the params that change what a finished clip holds (the resumable work is keyed on them only)
CLIP_KEYS = ("img_size", "storage", "jpeg_quality", "max_faces", "max_gap", "smooth_window", "min_frames")


def shard_of(clip_id: str, n_shards: int) -> int:
    """Stable across machines and Python runs (unlike hash())."""
    return int(hashlib.sha1(clip_id.encode()).hexdigest()[:8], 16) % n_shards


class Rejected(Exception):
    pass


def process_clip(row: dict, cfg: dict, tracker: faces.FaceTracker) -> dict:
    path = row["video_path"]
    notes = {}
    try:
        frames, wav = ffmpeg.read_av(
            path,
            int(row["width"]),
            int(row["height"]),
            fps=25 if row["needs_resample"] else None,
            sample_rate=audio_io.SAMPLE_RATE,
        )
        if row["needs_resample"]:
            notes["resampled_from_fps"] = float(row["fps"])
    except ffmpeg.FFmpegError as exc:
        raise Rejected(f"unreadable: {exc}") from None
    n = len(frames)
    if not row["needs_resample"] and n != row["n_frames"]:
        raise Rejected(f"frame-count mismatch: manifest {row['n_frames']}, decoded {n}")
    if len(wav) == 0:
        raise Rejected("no audio")
    audio_frames = len(wav) / SAMPLES_PER_FRAME
    if abs(audio_frames - n) > 1:
        common = min(n, int(audio_frames))
        notes["trimmed_from"] = [n, round(audio_frames, 2)]
        frames = frames[:common]
        n = common
    wav = wav[: n * SAMPLES_PER_FRAME]
    if n < cfg["min_frames"]:
        raise Rejected(f"too short for a {cfg['min_frames']}-frame window: {n} frames")
    try:
        track = tracker.track(frames, cfg["max_gap"])
    except faces.NoFace as exc:
        raise Rejected(f"no face: {exc}") from None
    except faces.FaceLost as exc:
        raise Rejected(f"face lost too long: {exc}") from None
    size = cfg["img_size"]
    transforms = crops.align_transforms(track.landmarks, size, cfg["smooth_window"])
    crop = crops.warp(frames, transforms, size)
    lm = crops.transform_points(track.landmarks, transforms)
    mel = audio_io.melspectrogram(wav)
    meta = {
        "filled_frames": int((~track.found).sum()),
        "max_faces": int(track.max_faces),
        "multi_face": bool(track.max_faces > 1),
        "resampled": "resampled_from_fps" in notes,
        "trimmed": "trimmed_from" in notes,
        "notes": json.dumps(notes),
    }
    out = {"clip_id": row["clip_id"], "landmarks": lm.astype(np.float16), "mel": mel, "meta": meta}
    if cfg["storage"] == "raw":
        out["frames"] = crop
    else:
        out["jpeg"] = store.encode_jpeg(crop, cfg["jpeg_quality"])
    return out


# ----------------------------------------------------------------------------- workers
_TRACKER: faces.FaceTracker | None = None


def _init_worker(max_faces: int) -> None:
    global _TRACKER
    _TRACKER = faces.FaceTracker(max_faces=max_faces)


def _clip_file(work: Path, clip_id: str) -> Path:
    return work / f"{hashlib.sha1(clip_id.encode()).hexdigest()[:20]}.npz"


def _work_on(args) -> tuple[str, str, int]:
    row, cfg, work = args
    target = _clip_file(Path(work), row["clip_id"])
    try:
        clip = process_clip(row, cfg, _TRACKER)
        payload = {
            "kind": np.array("ok"),
            "clip_id": np.array(clip["clip_id"]),
            "landmarks": clip["landmarks"],
            "mel": clip["mel"],
            "meta": np.array(json.dumps(clip["meta"])),
        }
        if "frames" in clip:
            payload["frames"] = clip["frames"]
        else:
            payload["jpeg"] = np.array(clip["jpeg"], dtype=object)
        n = len(clip["landmarks"])
        result = ("ok", "", n)
    except Rejected as exc:
        payload = {"kind": np.array("reject"), "clip_id": np.array(row["clip_id"]), "reason": np.array(str(exc))}
        result = ("reject", str(exc), 0)
    except Exception as exc:  # anything unforeseen rejects this clip, never the shard
        reason = f"error: {type(exc).__name__}: {exc} ({row['video_path']})"
        log.warning("clip %s: %s", row["clip_id"], reason)
        payload = {"kind": np.array("reject"), "clip_id": np.array(row["clip_id"]), "reason": np.array(reason)}
        result = ("reject", reason, 0)
    with atomic_file(target, keep_suffix=True) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **payload)
    return result


def _is_reject(path: Path) -> bool:
    with np.load(path, allow_pickle=True) as z:
        return str(z["kind"]) == "reject"


def _load_finished(path: Path):
    with np.load(path, allow_pickle=True) as z:
        if str(z["kind"]) == "reject":
            return None, {"clip_id": str(z["clip_id"]), "reason": str(z["reason"])}
        clip = {
            "clip_id": str(z["clip_id"]),
            "landmarks": z["landmarks"],
            "mel": z["mel"],
            "meta": json.loads(str(z["meta"])),
        }
        if "frames" in z:
            clip["frames"] = z["frames"]
        else:
            clip["jpeg"] = list(z["jpeg"])
        return clip, None


def run(view: dict, ctx: StageContext) -> dict:
    shard = ctx.shard
    dataset = view["data"]["dataset"]
    cfg = view["preprocess"]
    n_shards = len(cfg["shards"])
    if shard not in cfg["shards"]:
        raise PipelineError(f"--shard {shard} is not one of preprocess.shards {cfg['shards']}")
    manifest_path = paths.manifest(dataset)
    if not manifest_path.is_file():
        raise PipelineError(f"{manifest_path} not found: run the index stage first")
    manifest = pd.read_parquet(manifest_path)
    rows = [r for r in manifest.to_dict("records") if shard_of(r["clip_id"], n_shards) == shard]
    per_clip = {k: cfg[k] for k in CLIP_KEYS}  # raising max_reject_fraction keeps the finished clips
    fp = fingerprint(per_clip, [manifest_path] + code_files("preprocess"))
    work = paths.work_dir("preprocess", fp) / f"shard-{shard}"
    work.mkdir(parents=True, exist_ok=True)
    # finished clips are reused; rejected ones are tried again (the file may have been fixed)
    retried = [
        r for r in rows if _clip_file(work, r["clip_id"]).exists() and _is_reject(_clip_file(work, r["clip_id"]))
    ]
    todo = [r for r in rows if not _clip_file(work, r["clip_id"]).exists()] + retried
    log.info(
        "shard %d/%d: %d clips, %d already done (resuming from %s)%s",
        shard,
        n_shards,
        len(rows),
        len(rows) - len(todo),
        work,
        f", {len(retried)} rejected before tried again" if retried else "",
    )
    started = time.time()
    n_workers = max(1, min(workers(cfg["workers"]), len(todo) or 1))
    frames_done = 0
    from tqdm import tqdm

    if todo:
        jobs = [(r, cfg, str(work)) for r in todo]
        with (
            mp.get_context("fork").Pool(n_workers, initializer=_init_worker, initargs=(cfg["max_faces"],)) as pool,
            tqdm(total=len(jobs), desc=f"preprocess shard {shard}", unit="clip", disable=None) as bar,
        ):
            for _kind, _reason, n in pool.imap_unordered(_work_on, jobs, chunksize=1):
                frames_done += n
                bar.update(1)
    seconds = time.time() - started
    rows.sort(key=lambda r: r["clip_id"])
    failures = []
    for r in rows:  # first pass: only the small reject records
        with np.load(_clip_file(work, r["clip_id"]), allow_pickle=True) as z:
            if str(z["kind"]) == "reject":
                failures.append({"clip_id": r["clip_id"], "split": r["split"], "reason": str(z["reason"])})
    failed = {f["clip_id"] for f in failures}

    def finished():  # second pass: one clip in memory at a time, in clip_id order
        for r in rows:
            if r["clip_id"] not in failed:
                clip, _ = _load_finished(_clip_file(work, r["clip_id"]))
                clip["meta"].update(split=r["split"], word=r["word"], speaker=r["speaker"])
                yield clip

    fail_df = pd.DataFrame(failures, columns=["clip_id", "split", "reason"])
    for f in failures[:20]:
        log.warning("rejected %s: %s", f["clip_id"], f["reason"])
    fraction = len(failures) / max(1, len(rows))
    if fraction > cfg["max_reject_fraction"]:
        reasons = fail_df["reason"].str.split(":").str[0].value_counts().to_dict()
        raise PipelineError(
            f"shard {shard}: {len(failures)} of {len(rows)} clips rejected ({fraction:.0%} > "
            f"preprocess.max_reject_fraction {cfg['max_reject_fraction']:.0%}); reasons: {reasons}. "
            f"Finished clips are kept in {work} for the re-run."
        )
    meta = store.write_shard(
        paths.processed_shard(dataset, shard), finished(), cfg["img_size"], cfg["storage"], fail_df
    )
    shutil.rmtree(work, ignore_errors=True)
    per_core = frames_done / max(1e-9, seconds) / n_workers
    summary = {
        "clips": meta["clips"],
        "rejected": meta["rejected"],
        "frames": meta["frames"],
        "frames_per_s_per_core": round(per_core, 1),
        "workers": n_workers,
    }
    return summary
