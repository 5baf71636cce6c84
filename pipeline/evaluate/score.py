"""`python -m pipeline score VIDEO...`: is a video in sync, by how many frames, how confidently.

For each video: its frames at 25 fps and its audio (channels averaged, 16 kHz) are decoded;
every face is tracked over the clip (pipeline.preprocess.faces); each face is cropped as the
network expects; the network scores every face's crops against the audio; the speaking face is
the one it finds most confidently in sync (a still face has no sync to find, however large or
central it is). The choice and every face's confidence are reported.

Networks: syncnet_python's public `syncnet_v2.model` when given (`--syncnet-v2`), on
syncnet_python's 224 px face crops (the box of the face, padded as its run_pipeline.py pads
S3FD's: 0.4 of the half-size, more below the chin, median-smoothed over the clip) with Wav2Lip's
LSE protocol (pipeline.evaluate.lse); else the project's expert on the aligned crops that
preprocessing makes. Every result names its network.

Per video: `offset` in frames, > 0 when the audio lags the video (audio delayed by 3 frames ->
+3), and `offset_syncnet_python`, the same in syncnet_python's sign (its `AV offset`); `lse_d`
(the minimum of the mean distances), `lse_c` (their median minus that minimum: the confidence),
`dists` (the mean distance at each offset, from -search to +search), `at_search_edge` (the best offset is
the search's limit: the evidence is weak, not an offset of that size), `rival_gap` (how much
worse the best other candidate offset, `rival_offset`, fits, in units of the confidence;
pipeline.nets.sync) and
`uncertain` (rival_gap below pipeline.nets.sync.UNCERTAIN_GAP: another offset fits about as
well, so the offset is a guess between them; LSE-C alone does not tell this).
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

import numpy as np

from ..errors import PipelineError
from ..io import ffmpeg
from ..io.align import FPS
from ..io.audio import SAMPLE_RATE, melspectrogram
from ..nets.sync import UNCERTAIN_GAP, rival
from ..preprocess import crops
from ..preprocess.faces import FaceTracker
from . import lse

SMOOTH_WINDOW = 5  # frames: the crop's smoothing, as preprocess.smooth_window's default
SYNCNET_PAD = 0.4  # syncnet_python's crop_scale
SYNCNET_SIZE = 224
TABLE_FIELDS = ("video", "network", "faces", "face", "offset", "offset_syncnet_python", "lse_d", "lse_c")


def syncnet_crops(frames: np.ndarray, landmarks: np.ndarray, size: int = SYNCNET_SIZE) -> np.ndarray:
    """syncnet_python's face crops (run_pipeline.py, crop_video) on the box of the face's landmarks:
    centre and half-size median-filtered over the clip, the frame padded by 110 (its grey), the
    crop [y - s, y + s(1 + 2c)] x [x - s(1 + c), x + s(1 + c)] with c = 0.4, resized to 224."""
    import cv2
    from scipy.signal import medfilt

    lo, hi = np.nanmin(landmarks, axis=1), np.nanmax(landmarks, axis=1)  # [T, 2]
    half = medfilt(np.max(hi - lo, axis=1) / 2, kernel_size=13)
    cx = medfilt((lo[:, 0] + hi[:, 0]) / 2, kernel_size=13)
    cy = medfilt((lo[:, 1] + hi[:, 1]) / 2, kernel_size=13)
    out = []
    for frame, s, x, y in zip(frames, half, cx, cy):
        pad = int(s * (1 + 2 * SYNCNET_PAD))
        big = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), constant_values=110)
        y0, x0 = int(y + pad - s), int(x + pad - s * (1 + SYNCNET_PAD))
        y1, x1 = int(y + pad + s * (1 + 2 * SYNCNET_PAD)), int(x + pad + s * (1 + SYNCNET_PAD))
        out.append(cv2.resize(big[y0:y1, x0:x1], (size, size)))
    return np.stack(out)


def _face_scores(scorer, frames: np.ndarray, track, wav: np.ndarray, mel: np.ndarray, tmp: Path, k: int) -> dict:
    if isinstance(scorer, lse.OwnExpertScorer):
        size = scorer.model.img_size
        crop = crops.warp(frames, crops.align_transforms(track.landmarks, size, SMOOTH_WINDOW), size)
        return scorer.score_frames(crop, mel)
    video = tmp / f"face-{k}.mp4"  # syncnet_python reads its crops back from a video, as here
    ffmpeg.write_mp4(video, syncnet_crops(frames, track.landmarks), FPS, wav, SAMPLE_RATE)
    return scorer(video)


def score_video(path: str | Path, scorer, tracker: FaceTracker, faces: str = "speaking") -> list[dict]:
    """Rows of one video: the speaking face's (faces="speaking") or every face's ("all")."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError("no such file")
    try:
        frames = ffmpeg.read_frames(path, fps=FPS)
        wav = ffmpeg.read_audio(path, SAMPLE_RATE)
    except ffmpeg.FFmpegError as exc:
        raise PipelineError(f"cannot be read ({exc.reason.replace(f'{path}: ', '')})") from None
    n = min(len(frames), len(wav) // (SAMPLE_RATE // FPS))
    if n < 6:
        raise PipelineError(
            f"{path}: too short to score ({len(frames)} frames, {len(wav) / SAMPLE_RATE:.2f} s of audio)"
        )
    frames, wav = frames[:n], wav[: n * (SAMPLE_RATE // FPS)]
    tracks = tracker.tracks(frames)
    if not tracks:
        raise PipelineError(f"no face followed over at least half of its {n} frames")
    mel = melspectrogram(wav)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, track in enumerate(tracks):
            r = _face_scores(scorer, frames, track, wav, mel, Path(tmp), k)
            curve = np.array([np.nan if d is None else d for d in r["dists"]], float)  # offsets -search..search
            gap, other = rival(curve, best=scorer.search + int(r["offset"]))
            box = np.concatenate([np.nanmin(track.landmarks, axis=(0, 1)), np.nanmax(track.landmarks, axis=(0, 1))])
            rows.append(
                {
                    "video": str(path),
                    "network": r["network"],
                    "frames": n,
                    "faces": len(tracks),
                    "face": k,
                    "face_box": [int(round(v)) for v in box],  # x0, y0, x1, y1 over the clip, pixels
                    "face_found_frames": int(track.found.sum()),
                    "offset": int(r["offset"]),
                    "offset_syncnet_python": int(r["offset_syncnet_python"]),
                    "lse_d": float(r["min_dist"]),
                    "lse_c": float(r["confidence"]),
                    "at_search_edge": abs(int(r["offset"])) == scorer.search,
                    "rival_gap": round(gap, 4),
                    # the best other candidate (a local minimum at least 3 frames away), same sign as offset
                    "rival_offset": None if other is None else other - scorer.search,
                    "uncertain": bool(gap < UNCERTAIN_GAP or abs(int(r["offset"])) == scorer.search),
                    "dists": r["dists"],
                }
            )
    speaking = max(range(len(rows)), key=lambda k: rows[k]["lse_c"])
    confidences = [round(r["lse_c"], 4) for r in rows]
    for k, r in enumerate(rows):
        r.update(speaking=k == speaking, face_confidences=confidences)
    return rows if faces == "all" else [rows[speaking]]


def score(
    videos: list[str | Path],
    syncnet_v2: str | Path | None = None,
    expert: str | Path | None = None,
    faces: str = "speaking",
    search: int = 15,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[list[dict], list[dict]]:
    """(rows, failures) over many videos: a bad file is a failure row ({video, error}), never the
    end of the others. The network is loaded (and checked) before any video is read."""
    import torch
    from tqdm import tqdm

    from .. import paths
    from ..runtime import threads

    if faces not in ("speaking", "all"):
        raise PipelineError(f"--faces must be speaking or all, got {faces!r}")
    torch.set_num_threads(threads())
    scorer = lse.make_scorer(syncnet_v2, expert or paths.model_dir("sync_expert") / "expert.pt", device, search)
    tracker = FaceTracker(max_faces=4)
    rows, failures = [], []
    try:
        for video in tqdm(videos, desc="score", unit="video", disable=None if progress else True):
            try:
                rows += score_video(video, scorer, tracker, faces)
            except PipelineError as exc:
                failures.append({"video": str(video), "error": str(exc)})
    finally:
        tracker.close()
    return rows, failures


def render(rows: list[dict], failures: list[dict], fmt: str) -> str:
    """json (everything, the distance curves included), csv (one row per video and face, the
    curve as ';'-separated values) or a table to read."""
    if fmt == "json":
        return json.dumps({"results": rows, "failures": failures}, indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        fields = [
            *TABLE_FIELDS,
            "uncertain",
            "rival_gap",
            "rival_offset",
            "at_search_edge",
            "speaking",
            "face_confidences",
            "dists",
            "error",
        ]
        w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(
                {
                    **r,
                    "face_confidences": ";".join(map(str, r["face_confidences"])),
                    "dists": ";".join("" if d is None else str(d) for d in r["dists"]),
                }
            )
        for f in failures:
            w.writerow(f)
        return buf.getvalue()
    lines = []
    for r in rows:
        edge = "  (best offset at the search's edge: no clear sync)" if r["at_search_edge"] else ""
        if r["uncertain"] and not r["at_search_edge"]:
            edge = f"  (uncertain: offset {r['rival_offset']:+d} fits almost as well, rival gap {r['rival_gap']:.2f})"
        lines.append(
            f"{r['video']}: offset {r['offset']:+d} frames (syncnet_python: {r['offset_syncnet_python']:+d}), "
            f"LSE-D {r['lse_d']:.3f}, LSE-C {r['lse_c']:.3f}, face {r['face']} of {r['faces']} "
            f"(confidences {r['face_confidences']}), {r['network']}{edge}"
        )
    lines += [f"{f['video']}: error: {f['error']}" for f in failures]
    return "\n".join(lines) + "\n"
