"""The demo stage: one test clip's face driven by another test clip's speech, through the same
code as `python -m pipeline infer`, into reports/demo/ (shown in the report).

demo.json also says whether the mouth follows the driving speech (pipeline.evaluate.mouth_sync):
the correlation of the output's mouth opening with the driving speech's envelope and with the
face clip's own audio (arranged as the output's frames), and the input video's own mouth against
the driving speech (what no lip-sync gives)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import paths
from ..errors import PipelineError
from ..infer import infer, ping_pong, read_speech
from ..io import ffmpeg
from ..runtime import atomic_folder, without_timings, write_json_atomic
from ..stages import StageContext
from . import mouth_sync


def pick_pairs(ds: str, k: int = 4) -> list[tuple[str, str]]:
    """Up to k (face video, speech video) pairs of test clips of different words, kept by
    sync_check; the first is the demo video."""
    manifest = pd.read_parquet(paths.manifest(ds))
    test = manifest[manifest.split == "test"].sort_values("clip_id")
    table = paths.sync_check_dir(ds) / "offsets.parquet"
    if table.is_file():
        t = pd.read_parquet(table)
        kept = test[~test.clip_id.isin(set(t.clip_id[t.excluded]))]
        test = kept if len(kept) >= 2 else test
    if len(test) < 2:
        raise PipelineError(f"the demo needs 2 test clips in {paths.manifest(ds)}, found {len(test)}")
    rows = test.to_dict("records")
    pairs = []
    for i, face in enumerate(rows):
        others = [r for r in rows if r.get("word") != face.get("word")] or [r for r in rows if r is not face]
        speech = others[(i * 7 + len(others) - 1) % len(others)]  # spread over the split, deterministic
        pairs.append((str(face["video_path"]), str(speech["video_path"])))
        if len(pairs) == k:
            break
    return pairs


def run(view: dict, ctx: StageContext) -> dict:
    ds = view["data"]["dataset"]
    variants = view["generator"]["variants"]
    variant = "memory" if "memory" in variants else variants[0]
    ckpt = paths.model_dir("generator") / variant / "generator.pt"
    pairs = pick_pairs(ds)
    out = paths.demo_dir()
    with atomic_folder(out) as tmp:
        checks = []
        for k, (face, speech) in enumerate(pairs):  # the first is the demo; the others only measured
            video = tmp / ("demo.mp4" if k == 0 else f".pair-{k}.mp4")
            done = infer(Path(face), Path(speech), ckpt, video)
            if k == 0:
                summary = done
            checks.append({"face": face, "speech": speech, **follow_check(Path(face), Path(speech), video)})
            if k > 0:
                video.unlink()
        summary.update(checks[0])
        means = {
            f"mean_{key}": round(float(np.nanmean([c[key] for c in checks])), 4)
            for key in ("mouth_corr_driving", "mouth_corr_original", "input_mouth_corr_driving")
        }
        summary.update(
            means,
            pairs=len(checks),
            pairs_following_driving=int(sum(c["mouth_corr_driving"] > c["mouth_corr_original"] for c in checks)),
        )
        write_json_atomic(tmp / "demo.json", {"variant": variant, **without_timings(summary), "per_pair": checks})
    return {k: v for k, v in summary.items() if isinstance(v, (int, float))}


def follow_check(face: Path, speech: Path, output: Path) -> dict:
    """Mouth opening of the output against the driving speech and the face's own audio; the
    input's mouth against the driving speech as the no-lip-sync reference."""
    out_frames = ffmpeg.read_frames(output)
    n = len(out_frames)
    drive = read_speech(speech)
    face_frames = ffmpeg.read_frames(face, fps=25)
    own_env = ping_pong(mouth_sync.envelope(read_speech(face), len(face_frames)), n)
    result = mouth_sync.speech_follow(out_frames, drive, own_env)
    r_input, _ = mouth_sync.follows(mouth_sync.mouth_opening(ping_pong(face_frames, n)), mouth_sync.envelope(drive, n))
    result["input_mouth_corr_driving"] = r_input
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}
