"""A sync expert's verdict on a clip: syncnet_python's offset search, on this project's expert.

For each clip the expert embeds every valid audio window and every valid 5-frame face window
(pipeline.io.align's mapping). For each shift o in -search..+search the distance is the mean,
over all N audio windows, of the cosine distance between audio window i and face window i + o;
a window whose partner falls outside the clip counts its own chance distance, its mean distance
to the face windows that share no frame with its own (at least 5 apart). Averaging over the
windows with a partner only lets a large shift win on the few windows it keeps; padding them
with a large distance, as syncnet_python's zero vectors do, pulls every clip towards offset 0,
in sync or not; one chance distance for the whole clip lets a shift win by dropping the windows
that fit nothing well (silence: every face is far from it) rather than by fitting the others
(docs/experiments/2026-12-06-unseen-offsets.md). The clip's offset is minus the
best shift, so a positive offset means the audio lags the video (audio delayed by 5 frames ->
offset +5); confidence is median minus minimum distance, as SyncNet's evaluation defines it.
`rival_gap` says how clearly the best shift beats the best other candidate: the confidence does
not (speech with a regular rhythm has several minima). Used by the sync_check stage, the
generator's final check, the memory analysis, LSE with the project's expert and `score`.
"""

from __future__ import annotations

import numpy as np
import torch

from ..io import align

UNRELATED = 5  # 5-frame windows this far apart share no frame
RIVAL_SPAN = 3  # frames: a rival minimum is at least this far from the best
# rival_gap below this: two shifts fit about as well (chosen on clips of another recipe:
# docs/experiments/2026-12-06-unseen-offsets.md)
UNCERTAIN_GAP = 0.15


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


def window_chance(a: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Each audio window's chance distance [N]: the mean cosine distance of audio window i to
    the face windows j with |i - j| >= UNRELATED (which share no frame with its own), from the
    sums, without the N x N matrix; a window with no such face window (clips of under 10
    windows) takes its mean over all face windows."""
    n = len(a)
    a64, v64 = a.astype(np.float64), v.astype(np.float64)
    near_sum = np.zeros_like(v64)  # [N, D]: sum of the face windows within UNRELATED - 1 of i
    near_count = np.zeros(n)
    for o in range(1 - UNRELATED, UNRELATED):
        i = np.arange(max(0, -o), min(n, n - o))
        near_sum[i] += v64[i + o]
        near_count[i] += 1
    far_count = n - near_count
    total = v64.sum(0)
    far_sim = np.einsum("nd,nd->n", a64, total[None] - near_sum) / np.maximum(far_count, 1)
    all_sim = a64 @ total / n
    return 1.0 - np.where(far_count > 0, far_sim, all_sim)


def offset_distances(a: np.ndarray, v: np.ndarray, search: int = 15, min_overlap: int = 3) -> np.ndarray:
    """Mean cosine distance between audio window i and face window i + o over all audio windows,
    for o = -search..search; a window without a partner counts its own chance distance
    (window_chance). nan where fewer than min_overlap windows have a partner."""
    n = len(a)
    chance = window_chance(a, v)
    out = np.full(2 * search + 1, np.nan)
    for k, o in enumerate(range(-search, search + 1)):
        i = np.arange(max(0, -o), min(n, n - o))
        if len(i) >= min_overlap:
            missing = np.ones(n, bool)
            missing[i] = False
            out[k] = float((np.sum(1.0 - (a[i] * v[i + o]).sum(1)) + chance[missing].sum()) / n)
    return out


def estimate_offset(dists: np.ndarray, search: int = 15) -> tuple[int, float, float]:
    """(offset, confidence, min distance): offset > 0 means the audio lags the video."""
    k = int(np.nanargmin(dists))
    shift = k - search
    return -shift, float(np.nanmedian(dists) - dists[k]), float(dists[k])


def rival(dists: np.ndarray, best: int | None = None) -> tuple[float, int | None]:
    """(rival_gap, the rival's index in dists or None): how much worse the best rival shift is
    than the best one, in units of the confidence (median - minimum): the lowest local minimum at
    least RIVAL_SPAN frames from the best, minus the best, divided by the confidence. Scale-free,
    so the same for any network's distances; 1.0 (and None) when no rival is below the median. Below
    UNCERTAIN_GAP the offset is a guess between the two. `best`: the index of the offset
    reported (default: the first minimum), so that an exact tie names the other one."""
    d = np.where(np.isnan(dists), np.inf, dists)
    k = int(np.argmin(d)) if best is None else int(best)
    conf = float(np.nanmedian(dists) - d[k])
    left, right = np.r_[np.inf, d[:-1]], np.r_[d[1:], np.inf]
    rivals = [
        j for j in range(len(d)) if abs(j - k) >= RIVAL_SPAN and np.isfinite(d[j]) and d[j] <= min(left[j], right[j])
    ]
    if not rivals or conf <= 0:
        return 1.0, None
    j = min(rivals, key=lambda j: d[j])
    gap = (d[j] - d[k]) / conf
    return (1.0, None) if gap >= 1.0 else (float(gap), j)  # a "rival" no lower than the median is none


def rival_gap(dists: np.ndarray) -> float:
    """rival()'s gap alone."""
    return rival(dists)[0]


def sync_of(expert, frames: np.ndarray, mel: np.ndarray, search: int = 15) -> tuple[int, float, float]:
    """(offset, confidence, confidence at offset 0): median distance minus the minimum, and
    minus the distance at the true alignment (a clip whose mouth follows shifted audio has a
    confident minimum elsewhere, and a low confidence at 0)."""
    a, v = clip_embeddings(expert, frames, mel)
    d = offset_distances(a, v, search)
    offset, conf, _ = estimate_offset(d, search)
    return offset, conf, float(np.nanmedian(d) - d[search])
