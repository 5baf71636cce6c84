"""Preprocessing throughput against its cost floor, measured in the same run on the same clips.

Floor: a bare loop that only decodes each clip with ffmpeg and runs one face-mesh pass per frame
(tracking mode), the least any pipeline that looks at every face must do. Stage: the preprocess
stage's per-clip work (decode, face tracking, alignment, crops, mel, packing). Both run as one
worker process per core over the same clips, as the stage does, so "per core" is total
throughput divided by the cores used (mediapipe runs helper threads; a single process would
borrow the idle core and flatter both). Prints frames/s per core, the ratio (goal >= 0.7) and the
projected hours for LRS2 main (~2.6M frames) on a 16-core node (goal <= 0.5 h).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from pipeline.io import ffmpeg  # noqa: E402
from pipeline.runtime import available_cores  # noqa: E402

LRS2_MAIN_FRAMES = 2.6e6
_STATE = {}


def _init(kind: str, cfg: dict) -> None:
    if kind == "floor":
        import mediapipe

        _STATE["mesh"] = mediapipe.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1)
    else:
        from pipeline.preprocess import faces

        _STATE["tracker"] = faces.FaceTracker(max_faces=cfg["max_faces"])
    _STATE["cfg"] = cfg


def _floor(row: dict) -> int:
    frames = ffmpeg.read_frames(row["video_path"])
    for f in frames:
        _STATE["mesh"].process(f)
    return len(frames)


def _stage(row: dict) -> int:
    from pipeline.preprocess.run import process_clip

    return len(process_clip(row, _STATE["cfg"], _STATE["tracker"])["landmarks"])


def measure(kind: str, rows: list[dict], cfg: dict, cores: int) -> float:
    with mp.get_context("fork").Pool(cores, initializer=_init, initargs=(kind, cfg)) as pool:
        fn = _floor if kind == "floor" else _stage
        pool.map(fn, rows[: 2 * cores], chunksize=1)  # warm-up: models loaded, page cache filled
        start = time.perf_counter()
        frames = sum(pool.map(fn, rows, chunksize=1))
        return frames / (time.perf_counter() - start) / cores


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--manifest", default="data/manifests/embedded.parquet")
    ap.add_argument("--clips", type=int, default=80)
    ap.add_argument("--storage", default="raw", choices=["raw", "jpeg"])
    args = ap.parse_args()
    import yaml

    cfg = yaml.safe_load(open("params.yaml"))["preprocess"]
    cfg["storage"] = args.storage
    rows = pd.read_parquet(args.manifest).head(args.clips).to_dict("records")
    cores = available_cores()
    floor = measure("floor", rows, cfg, cores)
    stage = measure("stage", rows, cfg, cores)
    hours = LRS2_MAIN_FRAMES / (stage * 16) / 3600
    print(f"clips: {len(rows)} x {rows[0]['n_frames']} frames, {cores} worker processes, storage {args.storage}")
    print(f"floor (decode + 1 face-mesh pass per frame): {floor:.1f} frames/s per core")
    print(f"preprocess stage:                            {stage:.1f} frames/s per core")
    print(
        f"projected LRS2 main (2.6M frames) on a 16-core node: {hours:.2f} h (goal <= 0.5 h, >= 90 frames/s per core)"
    )
    print(f"ratio stage/floor: {stage / floor:.2f} (goal >= 0.7)")


if __name__ == "__main__":
    main()
