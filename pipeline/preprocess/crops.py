"""Similarity-aligned face crops from face-mesh landmarks.

Each frame's eye centres and mouth centre are mapped onto fixed places of the crop (rotation
removed), by a least-squares similarity transform; the transform's scale, angle and offset
are smoothed over time (the mouth landmarks themselves are not, so lip motion stays sharp).
The lower half of a crop holds the nose tip's lower part, the mouth and the chin.
"""

from __future__ import annotations

import numpy as np

from ..geometry import TEMPLATE

# face-mesh indices
RIGHT_EYE = [33, 133, 159, 145]  # the subject's right eye (image left in a frontal view)
LEFT_EYE = [263, 362, 386, 374]
MOUTH = [61, 291, 13, 14]
# where they go: geometry.TEMPLATE


def anchor_points(lm: np.ndarray) -> np.ndarray:
    return np.stack([lm[RIGHT_EYE].mean(0), lm[LEFT_EYE].mean(0), lm[MOUTH].mean(0)])


def similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, float, float, float]:
    """(scale, angle, tx, ty) of the similarity mapping src points onto dst (least squares)."""
    s_mean, d_mean = src.mean(0), dst.mean(0)
    s, d = src - s_mean, dst - d_mean
    a = (s * d).sum()
    b = (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum()
    scale = np.hypot(a, b) / max(1e-9, (s**2).sum())
    angle = np.arctan2(b, a)
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    tx, ty = d_mean - rot @ s_mean
    return float(scale), float(angle), float(tx), float(ty)


def to_matrix(scale: float, angle: float, tx: float, ty: float) -> np.ndarray:
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]], np.float64)


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average along axis 0 with edge padding (window 1 = unchanged)."""
    if window <= 1 or len(values) < 2:
        return values
    r = window // 2
    padded = np.pad(values, [(r, r)] + [(0, 0)] * (values.ndim - 1), mode="edge")
    kernel = np.ones(2 * r + 1) / (2 * r + 1)
    return np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="valid"), 0, padded)


def align_transforms(landmarks: np.ndarray, size: int, window: int) -> np.ndarray:
    """[T, 2, 3] matrices mapping frame pixels to crop pixels, smoothed over `window` frames."""
    dst = TEMPLATE * size
    params = np.array([similarity(anchor_points(lm), dst) for lm in landmarks])
    params[:, 1] = np.unwrap(params[:, 1])
    # smooth the source-side anchors' geometry via the transform parameters
    params = smooth(params, window)
    return np.stack([to_matrix(*p) for p in params])


def warp(frames: np.ndarray, transforms: np.ndarray, size: int) -> np.ndarray:
    import cv2

    out = np.empty((len(frames), size, size, 3), np.uint8)
    for i, (frame, m) in enumerate(zip(frames, transforms)):
        out[i] = cv2.warpAffine(frame, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out


def transform_points(landmarks: np.ndarray, transforms: np.ndarray) -> np.ndarray:
    """Landmarks [T, N, 2] in crop coordinates."""
    lin = transforms[:, :, :2]
    off = transforms[:, :, 2]
    return np.einsum("tij,tnj->tni", lin, landmarks) + off[:, None, :]
