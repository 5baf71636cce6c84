"""Image metrics on aligned face crops (docs/design.md §6): PSNR, SSIM, the mouth region.

Frames are uint8 [..., H, W, 3] (or float in the uint8 range). SSIM is the standard
Gaussian-window definition (sigma 1.5, window truncated at 3.5 sigma, K1 0.01, K2 0.03, population
covariances, reflect padding, border of half a window cropped before averaging, the mean over
colour channels): the same numbers as scikit-image's
`structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=255, channel_axis=-1)`, written here so that evaluation does not depend on it.
"""

from __future__ import annotations

import numpy as np

from ..geometry import MOUTH_BOX  # the mouth region of an aligned crop


def mouth_box(size: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) in pixels of a crop of `size`."""
    top, bottom, left, right = MOUTH_BOX
    return round(top * size), round(bottom * size), round(left * size), round(right * size)


def mouth(frames: np.ndarray) -> np.ndarray:
    y0, y1, x0, x1 = mouth_box(frames.shape[-2])
    return frames[..., y0:y1, x0:x1, :]


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """PSNR over all pixels of a and b (one number for a whole set of frames)."""
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(data_range**2 / mse))


def psnr_frames(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """PSNR of each frame [N, H, W, C] -> [N] (papers average per-frame PSNR)."""
    d = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2
    mse = d.reshape(len(d), -1).mean(1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(255.0**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0, sigma: float = 1.5) -> float:
    """SSIM of two images [H, W, C] (Gaussian window), the mean over channels."""
    from scipy.ndimage import gaussian_filter

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"ssim takes two [H, W, C] images of one shape, got {a.shape} and {b.shape}")
    truncate = 3.5
    pad = int(truncate * sigma + 0.5)  # (window - 1) / 2 with window = 11 at sigma 1.5
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for ch in range(a.shape[2]):
        x, y = a[..., ch], b[..., ch]
        f = lambda z: gaussian_filter(z, sigma=sigma, truncate=truncate, mode="reflect")
        ux, uy = f(x), f(y)
        vx, vy, vxy = f(x * x) - ux * ux, f(y * y) - uy * uy, f(x * y) - ux * uy
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
        values.append(s[pad:-pad, pad:-pad].mean() if pad else s.mean())
    return float(np.mean(values))


def ssim_frames(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([ssim(x, y) for x, y in zip(a, b)])


def to_uint8(frames) -> np.ndarray:
    """Model output [..., 3, H, W] in [-1, 1] (tensor or array) -> uint8 [..., H, W, 3]."""
    x = frames.detach().float().cpu().numpy() if hasattr(frames, "detach") else np.asarray(frames, np.float32)
    x = np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return np.moveaxis(x, -3, -1)
