"""Image metrics on aligned face crops (docs/design.md §6): PSNR, SSIM, sharpness, the mouth region.

Frames are uint8 [..., H, W, 3] (or float in the uint8 range). SSIM is the standard
Gaussian-window definition (sigma 1.5, window truncated at 3.5 sigma, K1 0.01, K2 0.03, population
covariances, reflect padding, border of half a window cropped before averaging, the mean over
colour channels): the same numbers as scikit-image's
`structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=255, channel_axis=-1)`, written here so that evaluation does not depend on it.

Sharpness is the variance of the Laplacian (Pech-Pacheco et al., ICPR 2000: the focus measure
most often used to tell blurred from sharp images, e.g. as OpenCV's `Laplacian(...).var()`): the
4-neighbour Laplacian [0 1 0; 1 -4 1; 0 1 0] of the luma (BT.601, 0-255) on the interior pixels
(no border rule), its variance per frame. No reference is needed, so it scores generated mouths
where no ground truth exists; it is chosen over CPBD because it needs no edge-width model that a
96-pixel mouth box is too small for. It rises with blur removed and also with noise and
artefacts: read it beside the ground-truth row (a system above the ground truth is noisier, not
sharper), at one crop size.

FID (`fid_features`, `frechet_distance`) is pytorch-fid's: the pool3 features of FID's Inception
(pipeline.models.inception) on frames in [0, 1], their mean and covariance (np.cov, N - 1), and
the Frechet distance |mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrt(S1 S2)) with scipy's sqrtm (1e-6 added
to the diagonals when the product's root is not finite, the imaginary part dropped when it is
numerical noise), as its calculate_frechet_distance.
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


def sharpness(frames: np.ndarray) -> np.ndarray:
    """Variance of the Laplacian of each frame's luma [N, H, W, 3] -> [N] (see the module docstring)."""
    x = np.asarray(frames, np.float64)
    y = x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114
    lap = y[:, 1:-1, :-2] + y[:, 1:-1, 2:] + y[:, :-2, 1:-1] + y[:, 2:, 1:-1] - 4.0 * y[:, 1:-1, 1:-1]
    return lap.reshape(len(lap), -1).var(1)


def fid_features(model, frames: np.ndarray, batch: int = 32) -> np.ndarray:
    """FID Inception pool3 features of uint8 frames [N, H, W, 3] -> float64 [N, 2048]."""
    import torch

    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for s in range(0, len(frames), batch):
            x = torch.from_numpy(np.ascontiguousarray(frames[s : s + batch])).to(device)
            out.append(model(x.permute(0, 3, 1, 2).float() / 255.0).double().cpu().numpy())
    return np.concatenate(out)


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray, eps: float = 1e-6) -> float:
    """FID between two sets of features [N, D] (see the module docstring)."""
    from scipy import linalg

    if len(feats_a) < 2 or len(feats_b) < 2:
        raise ValueError(f"FID needs at least 2 samples a side, got {len(feats_a)} and {len(feats_b)}")
    mu1, mu2 = feats_a.mean(0), feats_b.mean(0)
    s1, s2 = np.atleast_2d(np.cov(feats_a, rowvar=False)), np.atleast_2d(np.cov(feats_b, rowvar=False))
    diff = mu1 - mu2
    import warnings

    with warnings.catch_warnings():  # fewer samples than features: singular, as FID on a test split is
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            offset = np.eye(len(s1)) * eps
            covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary component {np.max(np.abs(covmean.imag)):.3g} in the covariance root")
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def to_uint8(frames) -> np.ndarray:
    """Model output [..., 3, H, W] in [-1, 1] (tensor or array) -> uint8 [..., H, W, 3]."""
    x = frames.detach().float().cpu().numpy() if hasattr(frames, "detach") else np.asarray(frames, np.float32)
    x = np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return np.moveaxis(x, -3, -1)
