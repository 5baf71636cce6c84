"""PyTorch datasets over the processed store: sync-expert pairs and generator samples.

Both read frame windows straight from the memory-mapped shards (nothing per frame on disk,
nothing whole in memory), use the one frame <-> mel mapping of pipeline.io.align, and draw
their randomness from (seed, epoch, index), so a sample is the same whatever worker makes it.
A sample that cannot be made raises SampleError naming the clip and frame.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ..io import align
from ..io.store import Store

VOICED_LEVEL = -2.2  # normalised mel level (about -47 dB): a window is voiced when some mel frame's mean exceeds it


class SampleError(RuntimeError):
    pass


def lower_half(frames: np.ndarray) -> np.ndarray:
    return frames[:, frames.shape[1] // 2 :]


def to_unit(frames: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W] in [0, 1]."""
    return np.ascontiguousarray(frames.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0


def is_voiced(mel_window: np.ndarray) -> bool:
    return bool(mel_window.mean(axis=1).max() > VOICED_LEVEL)


class _Windows(Dataset):
    """Common part: the clips of some splits and every centre frame with valid windows."""

    def __init__(self, store: Store, splits=("train",), clip_ids=None, seed: int = 0, span: int = 1):
        self.store = store
        idx = store.index
        keep = idx["split"].isin(splits)
        if clip_ids is not None:
            keep &= idx["clip_id"].isin(set(clip_ids))
        self.clips = idx[keep].reset_index(drop=True)
        pairs = []
        for k, row in enumerate(self.clips.itertuples()):
            valid = align.valid_frames(int(row.n_frames), int(row.n_mel))
            starts = [i for i in valid if i + span - 1 in valid]
            pairs.extend((k, i) for i in starts)
        self.pairs = np.array(pairs, dtype=np.int64).reshape(-1, 2)
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def locate(self, index: int) -> tuple[int, int]:
        """(epoch, position): an index past the end addresses the same windows in a later epoch,
        so a sampler can run through epochs without telling the workers."""
        if len(self.pairs) == 0:
            raise SampleError("the dataset has no clip with a valid window")
        return divmod(int(index), len(self.pairs))

    def rng(self, index: int) -> np.random.Generator:
        epoch, i = self.locate(index)
        return np.random.default_rng([self.seed, self.epoch + epoch, i])

    def _guard(self, index: int, fn):
        k, i = self.pairs[self.locate(index)[1]]
        cid = self.clips.clip_id[k]
        try:
            return fn(k, int(i), cid)
        except SampleError:
            raise
        except Exception as exc:  # any failure becomes one naming the clip and frame
            raise SampleError(f"sample {index} (clip {cid}, frame {i}): {type(exc).__name__}: {exc}") from exc


class SyncDataset(_Windows):
    """(faces [15, H/2, W] in [0, 1], mel [1, 80, 16], label 1 in sync / 0 not, voiced).

    Labels alternate with the index (balanced). Negatives pair the audio of frame i with the
    faces of frame j of the same clip, |i - j| >= min_offset, or with another clip's faces
    (a fraction `other_clip` of the negatives)."""

    def __init__(
        self,
        store: Store,
        splits=("train",),
        clip_ids=None,
        seed: int = 0,
        min_offset: int = 3,
        other_clip: float = 0.25,
    ):
        super().__init__(store, splits, clip_ids, seed)
        self.min_offset = min_offset
        self.other_clip = other_clip

    def __getitem__(self, index: int):
        return self._guard(index, lambda k, i, cid: self._make(index, k, i, cid))

    def _make(self, index, k, i, cid):
        rng = self.rng(index)
        row = self.clips.iloc[k]
        mel = self.store.mel(cid)
        mel_win = mel[align.mel_window(i, int(row.n_frames), int(row.n_mel))]
        label = 1 if index % 2 == 0 else 0
        face_clip, j = cid, i
        if label == 0:
            valid = align.valid_frames(int(row.n_frames), int(row.n_mel))
            far = [f for f in valid if abs(f - i) >= self.min_offset]
            if far and rng.random() >= self.other_clip:
                j = int(rng.choice(far))
            else:
                other = int(rng.integers(len(self.clips) - 1)) if len(self.clips) > 1 else k
                other += other >= k and len(self.clips) > 1
                orow = self.clips.iloc[other]
                face_clip = orow.clip_id
                ovalid = align.valid_frames(int(orow.n_frames), int(orow.n_mel))
                j = int(rng.choice(list(ovalid)))
                if face_clip == cid and abs(j - i) < self.min_offset:
                    raise SampleError(f"clip {cid}: no frame {self.min_offset}+ away from {i} for a negative")
        fr = self.store.frames(face_clip, j - align.HALF, j + align.HALF + 1)
        faces = to_unit(lower_half(fr))  # [5, 3, H/2, W]
        faces = faces.reshape(-1, *faces.shape[2:])  # [15, H/2, W]
        return (
            torch.from_numpy(faces),
            torch.from_numpy(np.ascontiguousarray(mel_win.T))[None],
            torch.tensor(float(label)),
            torch.tensor(is_voiced(mel_win)),
        )


class GeneratorDataset(_Windows):
    """SyncTalkFace samples of T consecutive target frames (docs/design.md §5), images in [-1, 1]:
    target [T, 3, S, S]; masked (target, lower half zeroed); reference [T, 3, S, S] from another
    window of the same clip; mel [T, 1, 80, 16] (each target's window); lip [T, 3, 5, S, S]
    (the 5 frames centred on each target, upper half zeroed)."""

    def __init__(self, store: Store, splits=("train",), clip_ids=None, seed: int = 0, t: int = 5):
        if t < 1:
            raise ValueError("t must be >= 1")
        super().__init__(store, splits, clip_ids, seed, span=t)
        self.t = t

    def __getitem__(self, index: int):
        return self._guard(index, lambda k, i, cid: self._make(index, k, i, cid))

    def _make(self, index, k, t0, cid):
        rng = self.rng(index)
        row = self.clips.iloc[k]
        n, t = int(row.n_frames), self.t
        span = self.store.frames(cid, t0 - align.HALF, t0 + t + align.HALF)  # targets and their lip windows
        img = to_unit(span) * 2.0 - 1.0  # [T + 4, 3, S, S]
        target = img[align.HALF : align.HALF + t]
        size = target.shape[-1]
        masked = target.copy()
        masked[:, :, size // 2 :] = 0.0
        starts = [s for s in range(0, n - t + 1) if abs(s - t0) >= t] or [s for s in range(0, n - t + 1) if s != t0]
        if not starts:
            raise SampleError(f"clip {cid}: too short for a reference window of {t} frames")
        r0 = int(rng.choice(starts))
        reference = to_unit(self.store.frames(cid, r0, r0 + t)) * 2.0 - 1.0
        mel = self.store.mel(cid)
        mels = np.stack([mel[align.mel_window(t0 + m, n, int(row.n_mel))].T for m in range(t)])[:, None]
        lip = np.stack([img[m : m + 2 * align.HALF + 1] for m in range(t)])  # [T, 5, 3, S, S]
        lip = lip.transpose(0, 2, 1, 3, 4).copy()  # [T, 3, 5, S, S]
        lip[:, :, :, : size // 2] = 0.0
        as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        return {
            "target": as_t(target),
            "masked": as_t(masked),
            "reference": as_t(reference),
            "mel": as_t(mels),
            "lip": as_t(lip),
            "clip_id": cid,
            "start": t0,
        }


class SyncGroups:
    """Batches of in-sync windows grouped by clip, for training the expert on hard negatives.

    Each group is one clip: `per_clip` centre frames spaced `min_offset` apart (random phase).
    Within a group, audio window i with face window i is in sync and with face window j != i is
    off sync by at least min_offset frames, so every negative differs from its positive only in
    timing, never in identity or voice: the expert cannot solve it by recognising the speaker.
    Batches are a pure function of (seed, step, rank)."""

    def __init__(self, store: Store, splits=("train",), min_offset: int = 3, per_clip: int = 8):
        self.store = store
        idx = store.index
        self.clips = idx[idx["split"].isin(splits)].reset_index(drop=True)
        self.valid = [align.valid_frames(int(r.n_frames), int(r.n_mel)) for r in self.clips.itertuples()]
        self.min_offset, self.per_clip = min_offset, per_clip
        usable = [k for k, v in enumerate(self.valid) if len(v) >= 1 + min_offset]
        if not usable:
            raise SampleError(f"no clip has two windows {min_offset} frames apart")
        self.usable = np.array(usable)

    def batch(self, seed: int, step: int, rank: int, n_clips: int):
        """(faces [N, 15, H/2, W] in [0, 1], mel [N, 1, 80, 16], group [N]) for n_clips clips."""
        rng = np.random.default_rng([seed, step, rank, 7])
        chosen = rng.choice(self.usable, size=n_clips, replace=len(self.usable) < n_clips)
        faces, mels, groups = [], [], []
        for g, k in enumerate(chosen):
            row = self.clips.iloc[int(k)]
            cid, valid = row.clip_id, self.valid[int(k)]
            phase = int(rng.integers(self.min_offset))
            centres = list(range(valid.start + phase, valid.stop, self.min_offset))
            if len(centres) > self.per_clip:
                first = int(rng.integers(len(centres) - self.per_clip + 1))
                centres = centres[first : first + self.per_clip]
            try:
                lo, hi = centres[0] - align.HALF, centres[-1] + align.HALF + 1  # only the span used
                lower = to_unit(lower_half(self.store.frames(cid, lo, hi)))
                mel = self.store.mel(cid)
                for c in centres:
                    faces.append(lower[c - align.HALF - lo : c + align.HALF + 1 - lo].reshape(-1, *lower.shape[2:]))
                    mels.append(mel[align.mel_window(c, int(row.n_frames), int(row.n_mel))].T[None])
                    groups.append(g)
            except Exception as exc:
                raise SampleError(f"clip {cid}: {type(exc).__name__}: {exc}") from exc
        return (
            torch.from_numpy(np.stack(faces)),
            torch.from_numpy(np.ascontiguousarray(np.stack(mels))),
            torch.tensor(groups),
        )


def augment_groups(
    faces: torch.Tensor, mel: torch.Tensor, groups: torch.Tensor, rng: np.random.Generator, mel_warp: float = 0.1
):
    """Per-clip augmentation of a SyncGroups batch: colour (gain per channel, brightness,
    contrast), geometry (shift, scale, horizontal flip), audio gain and a frequency warp of the
    mel (`warp_mel`, factor 1 +- `mel_warp`; 0: none), the same for every window
    of a group, so that negatives still differ from positives in timing only."""
    import torch.nn.functional as F

    n, c, h, w = faces.shape
    n_groups = int(groups.max()) + 1
    gain = torch.from_numpy(rng.uniform(0.8, 1.2, (n_groups, 1, 3, 1, 1)).astype(np.float32))
    bright = torch.from_numpy(rng.uniform(-0.08, 0.08, (n_groups, 1, 1, 1, 1)).astype(np.float32))
    contrast = torch.from_numpy(rng.uniform(0.8, 1.2, (n_groups, 1, 1, 1, 1)).astype(np.float32))
    x = faces.view(n, c // 3, 3, h, w)
    g = groups
    mean = x.mean(dim=(1, 2, 3, 4), keepdim=True)
    x = ((x - mean) * contrast[g] + mean) * gain[g] + bright[g]
    scale = rng.uniform(0.94, 1.06, n_groups)
    flip = np.where(rng.random(n_groups) < 0.5, -1.0, 1.0)
    tx, ty = rng.uniform(-0.06, 0.06, n_groups), rng.uniform(-0.06, 0.06, n_groups)
    theta = np.zeros((n_groups, 2, 3), np.float32)
    theta[:, 0, 0], theta[:, 1, 1] = scale * flip, scale
    theta[:, 0, 2], theta[:, 1, 2] = tx, ty
    grid = F.affine_grid(torch.from_numpy(theta)[g], (n, c, h, w), align_corners=False)
    x = F.grid_sample(x.reshape(n, c, h, w), grid, mode="bilinear", padding_mode="border", align_corners=False)
    audio_gain = torch.from_numpy(rng.uniform(-0.4, 0.4, (n_groups, 1, 1, 1)).astype(np.float32))
    if mel_warp > 0:
        mel = warp_mel(mel, rng.uniform(1.0 - mel_warp, 1.0 + mel_warp, n_groups)[g.numpy()])
    return x.clamp(0, 1), (mel + audio_gain[g]).clamp(-4, 4)


def warp_mel(mel: torch.Tensor, factor: np.ndarray) -> torch.Tensor:
    """Stretch each mel window [1, bins, steps] along frequency by `factor` (bin b takes the value
    of bin b * factor, bin 0 fixed): a vocal-tract-length change, so that the audio encoder does not
    learn one voice's formants (the held-out speakers' voices are not in training)."""
    import torch.nn.functional as F

    n = mel.shape[0]
    theta = np.zeros((n, 2, 3), np.float32)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = factor
    theta[:, 1, 2] = factor - 1.0  # y_in = factor * (y_out + 1) - 1: the lowest bin stays where it is
    grid = F.affine_grid(torch.from_numpy(theta), tuple(mel.shape), align_corners=True)
    return F.grid_sample(mel, grid, mode="bilinear", padding_mode="border", align_corners=True)
