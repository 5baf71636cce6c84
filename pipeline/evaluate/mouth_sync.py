"""Does the mouth follow the speech? Mouth opening measured on video frames, against the speech
envelope per frame.

Opening: the gap between the inner lips at their midpoints (face-mesh points 13 and 14) divided
by the distance between the inner mouth corners (78 and 308), so it does not depend on the face's
size in the frame; mediapipe's face mesh in tracking mode over the whole clip. Envelope: the RMS
of each frame's 40 ms of 16 kHz audio. Agreement: the Pearson correlation between the two over
the frames with a face, the best over video lags of -2..+2 frames (a mouth opens slightly before
the sound it makes). An output that lip-syncs to the driving speech correlates with that speech
more than with the face clip's own audio.
"""

from __future__ import annotations

import numpy as np

UPPER_INNER_MID, LOWER_INNER_MID = 13, 14
INNER_CORNERS = (78, 308)
SAMPLES_PER_FRAME = 640  # 16 kHz at 25 fps


def mouth_opening(frames: np.ndarray, min_confidence: float = 0.3) -> np.ndarray:
    """uint8 RGB frames [N, H, W, 3] -> opening per frame [N] (nan where no face was found)."""
    from ..mp_solutions import face_mesh

    out = np.full(len(frames), np.nan, np.float32)
    with face_mesh(
        static_image_mode=False,
        max_num_faces=1,
        refine_landmarks=False,
        min_detection_confidence=min_confidence,
        min_tracking_confidence=min_confidence,
    ) as mesh:
        for k, frame in enumerate(frames):
            res = mesh.process(np.ascontiguousarray(frame))
            if not res.multi_face_landmarks:
                continue
            lm = res.multi_face_landmarks[0].landmark
            h, w = frame.shape[:2]

            def xy(i, lm=lm, w=w, h=h):
                return np.array([lm[i].x * w, lm[i].y * h])

            width = np.linalg.norm(xy(INNER_CORNERS[0]) - xy(INNER_CORNERS[1]))
            if width > 0:
                out[k] = np.linalg.norm(xy(UPPER_INNER_MID) - xy(LOWER_INNER_MID)) / width
    return out


def envelope(wav: np.ndarray, n_frames: int) -> np.ndarray:
    """RMS of each video frame's audio (16 kHz mono), zero-padded to n_frames."""
    wav = np.pad(np.asarray(wav, np.float32), (0, max(0, n_frames * SAMPLES_PER_FRAME - len(wav))))
    chunks = wav[: n_frames * SAMPLES_PER_FRAME].reshape(n_frames, SAMPLES_PER_FRAME)
    return np.sqrt((chunks.astype(np.float64) ** 2).mean(1)).astype(np.float32)


def follows(opening: np.ndarray, env: np.ndarray, max_lag: int = 2) -> tuple[float, int]:
    """(best Pearson correlation over video lags -max_lag..max_lag, that lag); nan when fewer than
    5 frames with a face or no variation. Lag L compares frame i's opening with frame i+L's audio."""
    n = min(len(opening), len(env))
    best, best_lag = float("nan"), 0
    for lag in range(-max_lag, max_lag + 1):
        idx = np.arange(max(0, -lag), min(n, n - lag))
        o, e = opening[idx], env[idx + lag]
        ok = np.isfinite(o)
        if ok.sum() < 5 or np.std(o[ok]) == 0 or np.std(e[ok]) == 0:
            continue
        r = float(np.corrcoef(o[ok], e[ok])[0, 1])
        if not np.isfinite(best) or r > best:
            best, best_lag = r, lag
    return best, best_lag


def speech_follow(frames: np.ndarray, driving_wav: np.ndarray, original_env: np.ndarray) -> dict:
    """The mouth of `frames` against the driving speech and against the face's own audio
    (`original_env`: its envelope per output frame, arranged as the output's frames were)."""
    opening = mouth_opening(frames)
    r_drive, lag_drive = follows(opening, envelope(driving_wav, len(frames)))
    r_orig, lag_orig = follows(opening, original_env)
    return {
        "mouth_frames": int(np.isfinite(opening).sum()),
        "mouth_corr_driving": r_drive,
        "mouth_lag_driving": lag_drive,
        "mouth_corr_original": r_orig,
        "mouth_lag_original": lag_orig,
    }
