"""A sync expert's verdict on a clip: the offset search of syncnet_python, on this project's expert.

For each clip the expert embeds every valid audio window and every valid 5-frame face window
(pipeline.io.align's mapping); for each shift o in -search..+search the mean cosine distance
between audio window i and face window i + o is computed over the windows both sides have (never
padded). The clip's offset is minus the best shift, so a positive offset means the audio lags the
video (audio delayed by 5 frames -> offset +5); confidence is median minus minimum distance, as
SyncNet's evaluation defines it. Used by the sync_check stage, the generator's final check, the
memory analysis and LSE with the project's expert.
"""

from __future__ import annotations

import numpy as np
import torch

from ..io import align


@torch.no_grad()
def clip_embeddings(model, frames: np.ndarray, mel: np.ndarray, fps: float = 25.0, batch: int = 256):
    """Audio and face embeddings of every valid centre frame of one clip: (a [N, D], v [N, D])."""
    n = len(frames)
    valid = list(align.valid_frames(n, len(mel), fps))
    if not valid:
        raise ValueError(f"no valid window in a clip of {n} frames")
    lower = frames[:, frames.shape[1] // 2 :].transpose(0, 3, 1, 2).astype(np.float32) / 255.0  # [T, 3, H/2, W]
    faces = np.stack([lower[i - align.HALF : i + align.HALF + 1].reshape(-1, *lower.shape[2:]) for i in valid])
    mels = np.stack([mel[align.mel_window(i, n, len(mel), fps)].T[None] for i in valid])
    device = next(model.parameters()).device
    a_all, v_all = [], []
    for s in range(0, len(valid), batch):
        a, v = model(
            torch.from_numpy(mels[s : s + batch]).to(device), torch.from_numpy(faces[s : s + batch]).to(device)
        )
        a_all.append(a.float().cpu())
        v_all.append(v.float().cpu())
    return torch.cat(a_all).numpy(), torch.cat(v_all).numpy()


def offset_distances(a: np.ndarray, v: np.ndarray, search: int = 15, min_overlap: int = 3) -> np.ndarray:
    """Mean cosine distance between audio window i and face window i + o, for o = -search..search
    (nan where fewer than min_overlap windows overlap)."""
    n = len(a)
    out = np.full(2 * search + 1, np.nan)
    for k, o in enumerate(range(-search, search + 1)):
        i = np.arange(max(0, -o), min(n, n - o))
        if len(i) >= min_overlap:
            out[k] = float(np.mean(1.0 - (a[i] * v[i + o]).sum(1)))
    return out


def estimate_offset(dists: np.ndarray, search: int = 15) -> tuple[int, float, float]:
    """(offset, confidence, min distance): offset > 0 means the audio lags the video."""
    k = int(np.nanargmin(dists))
    shift = k - search
    return -shift, float(np.nanmedian(dists) - dists[k]), float(dists[k])


def sync_of(expert, frames: np.ndarray, mel: np.ndarray, search: int = 15) -> tuple[int, float, float]:
    """(offset, confidence, confidence at offset 0): median distance minus the minimum, and
    minus the distance at the true alignment (a clip whose mouth follows shifted audio has a
    confident minimum elsewhere, and a low confidence at 0)."""
    a, v = clip_embeddings(expert, frames, mel)
    d = offset_distances(a, v, search)
    offset, conf, _ = estimate_offset(d, search)
    return offset, conf, float(np.nanmedian(d) - d[search])
