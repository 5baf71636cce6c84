"""Scoring the evaluate stage's systems clip by clip, in this process or in worker processes:
protocol `reconstruction` (every test clip from its own audio: PSNR, SSIM, LMD, sharpness, LSE,
FID's features) and `cross_audio` (a face clip driven by another clip's speech: LSE, sharpness).
The stage itself, its tables and the protocols' definitions: pipeline/evaluate/run.py.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import paths
from ..io import ffmpeg
from ..io.align import FPS
from ..io.audio import SAMPLE_RATE
from ..io.store import Store
from ..models.inception import load_fid_inception
from ..nets import generate as gen
from ..nets.generate import load_generator
from ..nets.metrics import fid_features, mouth, psnr_frames, sharpness, ssim_frames
from ..runtime import thread_env
from . import lse
from .landmarks import MouthLandmarks, lmd


def clip_audio(row, raw_root: Path | None) -> np.ndarray:
    """The clip's 16 kHz mono audio, cut or padded to its frames (25 fps)."""
    path = Path(row.video_path)
    if not path.is_absolute() and raw_root is not None and not path.exists():
        path = raw_root / path
    wav = ffmpeg.read_audio(path, SAMPLE_RATE)
    n = int(row.n_frames) * 640
    return np.pad(wav, (0, max(0, n - len(wav))))[:n].astype(np.float32)


FID_KEYS = ("_fid_crop", "_fid_mouth")  # per-frame FID features of a row's frames
_CTX: dict = {}  # what every clip's scoring needs, in this process or in each worker process


def score_all(
    dataset: str,
    store: Store,
    clips: pd.DataFrame,
    pairs: list[tuple[str, str]],
    systems: dict[str, Path | None],
    scorer_args: tuple,
    samples: Path,
    sample_videos: int,
    workers: int = 1,
    inception: Path | None = None,
) -> tuple[list[dict], list[dict]]:
    """Per-system rows of every test clip (protocol reconstruction) and of every cross_audio pair,
    in clip and pair order whatever the number of worker processes; the first `sample_videos`
    of each protocol also leave a side-by-side video in `samples`. `systems`: name -> generator
    checkpoint (None: ground_truth and composite); `scorer_args`: lse.make_scorer's arguments.
    With `inception` (FID's weights file) each reconstruction row also carries the FID features of
    its frames, whole crop and mouth region, under the keys FID_KEYS (arrays, not table columns).

    With workers > 1 the clips are shared among that many processes of one torch thread each (a
    clip's work is mostly single-threaded: ffmpeg, the face mesh, small convolutions). They
    start from a fork server, not from this process: a fork of a process that has run the face
    mesh aborts in the child's first mesh. A worker that dies (a crash in a native library, the
    OOM killer) stops the stage with BrokenProcessPool rather than leaving it waiting."""
    from tqdm import tqdm

    tasks = [("reconstruction", k) for k in range(len(clips))] + [("cross_audio", k) for k in range(len(pairs))]
    rows, cross_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        payload = {
            "clips": clips,
            "pairs": pairs,
            "store_root": store.root,
            "dataset": dataset,
            "systems": systems,
            "scorer_args": scorer_args,
            "tmp": Path(tmp),
            "samples": Path(samples),
            "sample_videos": sample_videos,
            "inception": inception,
            "video_paths": pd.read_parquet(paths.manifest(dataset)).set_index("clip_id").video_path,
            "n_frames": store.index.set_index("clip_id").n_frames,
        }
        pool = None
        if workers <= 1:
            _init(payload, None)
            results = map(_score, tasks)
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload([__name__])
            pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init, initargs=(payload, 1))
            with thread_env(1):  # the fork server and its workers start with one thread in every library
                results = pool.map(_score, tasks)  # in task order
        try:
            for (protocol, _), got in tqdm(
                zip(tasks, results), total=len(tasks), desc="evaluate", unit="clip", disable=None
            ):
                (rows if protocol == "reconstruction" else cross_rows).extend(got)
        finally:
            _CTX.clear()
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
    return rows, cross_rows


def _init(payload: dict, threads: int | None) -> None:
    """Load what scoring needs. In a worker an error is kept and raised by its first task: a pool
    whose initializer fails restarts that worker for ever."""
    if threads:
        torch.set_num_threads(threads)
    try:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        _CTX.update(
            payload,
            store=Store(payload["store_root"]),
            marks=MouthLandmarks(),
            scorer=lse.make_scorer(*payload["scorer_args"]),
            models={n: load_generator(p, device) for n, p in payload["systems"].items() if p is not None},
            fid_net=load_fid_inception(payload["inception"], device) if payload["inception"] else None,
        )
    except Exception as exc:
        if not threads:
            raise
        _CTX["error"] = exc


def _score(task: tuple[str, int]) -> list[dict]:
    if "error" in _CTX:
        raise _CTX["error"]
    protocol, k = task
    if protocol == "reconstruction":
        return _reconstruction(k, next(_CTX["clips"].iloc[k : k + 1].itertuples()))
    return _cross_audio(k, *_CTX["pairs"][k])


def _systems_on(frames: np.ndarray, mels: np.ndarray) -> dict[str, np.ndarray]:
    refs = gen.reference_frames(frames)
    outputs = {"ground_truth": frames, "composite": gen.composite(frames, refs)}
    for name, model in _CTX["models"].items():
        outputs[name] = gen.generate(model, frames, mels, refs)
    return outputs


def _reconstruction(k: int, row) -> list[dict]:
    """Every system on one test clip, generated from its own audio."""
    c = _CTX
    frames, mel = c["store"].frames(row.clip_id), c["store"].mel(row.clip_id)
    audio = clip_audio(row, paths.raw_dir(c["dataset"]))
    outputs = _systems_on(frames, gen.mel_windows(len(frames), mel))
    real_lips = c["marks"].clip(frames)
    rows = []
    for name, fake in outputs.items():
        video = c["tmp"] / f"{name}-{k}.mp4"
        ffmpeg.write_mp4(video, fake, FPS, audio, SAMPLE_RATE)
        sync = c["scorer"](video, mel)
        dist, used = lmd(c["marks"].clip(fake), real_lips)
        rows.append(
            {
                "clip_id": row.clip_id,
                "system": name,
                "psnr": float(np.mean(np.minimum(psnr_frames(fake, frames), 100))),
                "ssim": float(ssim_frames(fake, frames).mean()),
                "psnr_mouth": float(np.mean(np.minimum(psnr_frames(mouth(fake), mouth(frames)), 100))),
                "ssim_mouth": float(ssim_frames(mouth(fake), mouth(frames)).mean()),
                "lmd": dist,
                "lmd_frames": used,
                "sharpness_mouth": float(sharpness(mouth(fake)).mean()),
                "lse_d": sync["min_dist"],
                "lse_c": sync["confidence"],
                "offset": sync["offset"],
            }
        )
        if c["fid_net"] is not None:
            rows[-1].update(zip(FID_KEYS, (fid_features(c["fid_net"], fake), fid_features(c["fid_net"], mouth(fake)))))
    if k < c["sample_videos"]:
        side = np.concatenate(list(outputs.values()), axis=2)
        ffmpeg.write_mp4(c["samples"] / f"{row.clip_id.replace('/', '_')}.mp4", side, FPS, audio, SAMPLE_RATE)
    return rows


def _cross_audio(k: int, audio_id: str, video_id: str) -> list[dict]:
    """LSE of every system on a face clip driven by another clip's speech (no ground truth exists)."""
    from ..io import audio as audio_io

    c = _CTX
    store = c["store"]
    frames = store.frames(video_id)
    a_row = pd.Series({"video_path": c["video_paths"][audio_id], "n_frames": c["n_frames"][audio_id]})
    n = min(len(frames), int(a_row.n_frames))
    frames = frames[:n]
    wav = clip_audio(a_row, paths.raw_dir(c["dataset"]))[: n * 640]
    mel = audio_io.melspectrogram(wav)
    outputs = _systems_on(frames, gen.mel_windows(n, mel))
    rows = []
    for name, fake in outputs.items():
        video = c["tmp"] / f"cross-{name}-{k}.mp4"
        ffmpeg.write_mp4(video, fake, FPS, wav, SAMPLE_RATE)
        sync = c["scorer"](video, mel)
        rows.append(
            {
                "audio_clip": audio_id,
                "video_clip": video_id,
                "system": name,
                "sharpness_mouth": float(sharpness(mouth(fake)).mean()),
                "lse_d": sync["min_dist"],
                "lse_c": sync["confidence"],
                "offset": sync["offset"],
            }
        )
    if k < c["sample_videos"]:
        side = np.concatenate(list(outputs.values()), axis=2)
        name = f"cross_{video_id.replace('/', '_')}__audio_{audio_id.replace('/', '_')}.mp4"
        ffmpeg.write_mp4(c["samples"] / name, side, FPS, wav, SAMPLE_RATE)
    return rows
