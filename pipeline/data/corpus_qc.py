"""Checks of a talking-face corpus that a person would otherwise make by eye: one face per frame,
mouth opening that follows the speech envelope at lag 0 (and not when shifted), speech coverage.
Used by the embedded corpus's tests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io import ffmpeg
from ..io.audio import SAMPLE_RATE


@dataclass
class ClipQC:
    faces_per_frame: list[int]
    mouth_open: np.ndarray  # inner-lip gap / mouth width per frame (nan where no mesh)
    envelope: np.ndarray  # audio RMS per frame span


def audio_envelope(audio: np.ndarray, n_frames: int, sample_rate: int, fps: float) -> np.ndarray:
    hop = sample_rate / fps
    env = np.zeros(n_frames)
    for i in range(n_frames):
        seg = audio[int(round(i * hop)) : int(round((i + 1) * hop))]
        env[i] = np.sqrt(np.mean(seg.astype(np.float64) ** 2)) if len(seg) else 0.0
    return env


def examine_clip(path: str, detector, mesh, sample_rate: int = SAMPLE_RATE) -> ClipQC:
    frames = ffmpeg.read_frames(path)
    audio = ffmpeg.read_audio(path, sample_rate)
    faces, opening = [], []
    for f in frames:
        det = detector.process(f)
        faces.append(len(det.detections or []))
        res = mesh.process(f)
        if res.multi_face_landmarks:
            lm = np.array([(p.x * f.shape[1], p.y * f.shape[0]) for p in res.multi_face_landmarks[0].landmark])
            opening.append(np.linalg.norm(lm[14] - lm[13]) / max(1e-6, np.linalg.norm(lm[291] - lm[61])))
        else:
            opening.append(np.nan)
    return ClipQC(faces, np.array(opening), audio_envelope(audio, len(frames), sample_rate, 25.0))


def mediapipe_models():
    from ..mp_solutions import face_detection, face_mesh

    detector = face_detection(model_selection=0, min_detection_confidence=0.5)
    mesh = face_mesh(static_image_mode=False, max_num_faces=2, refine_landmarks=False)
    return detector, mesh


def lagged_correlation(clips: list[ClipQC], lag: int) -> float:
    """Pearson correlation of mouth opening[i] with envelope[i + lag], pooled over clips after
    standardising each clip (so identities with bigger mouths do not dominate)."""
    xs, ys = [], []
    for c in clips:
        o, e = c.mouth_open, c.envelope
        n = len(o)
        idx = np.arange(max(0, -lag), min(n, n - lag))
        a, b = o[idx], e[idx + lag]
        ok = np.isfinite(a)
        if ok.sum() < 4 or a[ok].std() == 0 or b[ok].std() == 0:
            continue
        xs.append((a[ok] - a[ok].mean()) / a[ok].std())
        ys.append((b[ok] - b[ok].mean()) / b[ok].std())
    x, y = np.concatenate(xs), np.concatenate(ys)
    return float(np.corrcoef(x, y)[0, 1])
