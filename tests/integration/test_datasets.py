"""Training datasets over the store: shapes, balance, negatives, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline.data.datasets import GeneratorDataset, SampleError, SyncDataset, augment_groups, warp_mel
from pipeline.io import align
from pipeline.io.store import Store


@pytest.fixture(scope="module")
def store(processed):
    work, _ = processed
    return Store(work / "data/processed/lrw")


def test_sync_samples(store):
    ds = SyncDataset(store, splits=("train",), seed=1, min_offset=3)
    train = store.index[store.index.split == "train"]
    assert len(ds) == sum(len(align.valid_frames(r.n_frames, r.n_mel)) for r in train.itertuples())
    assert len(ds) >= 25 * (train.n_frames == 29).sum()  # frames 2..26 of every 29-frame clip
    faces, mel, label, voiced = ds[0]
    assert faces.shape == (15, 48, 96) and 0 <= faces.min() and faces.max() <= 1
    assert mel.shape == (1, 80, 16) and label.item() == 1.0
    labels = [ds[i][2].item() for i in range(40)]
    assert sum(labels) == 20  # balanced
    voiced_share = np.mean([ds[i][3].item() for i in range(0, len(ds), 7)])
    assert voiced_share > 0.6  # speech fills the embedded clips


def test_sync_positive_is_the_clips_own_window(store):
    ds = SyncDataset(store, seed=0)
    k, i = ds.pairs[0]
    cid = ds.clips.clip_id[k]
    faces, mel, label, _ = ds[0]
    expect = store.frames(cid, i - 2, i + 3)[:, 48:].transpose(0, 3, 1, 2).reshape(15, 48, 96) / 255.0
    assert np.allclose(faces.numpy(), expect)
    row = ds.clips.iloc[k]
    assert np.array_equal(mel[0].numpy().T, store.mel(cid)[align.mel_window(int(i), int(row.n_frames), int(row.n_mel))])


def test_negatives_are_far_enough(store):
    ds = SyncDataset(store, seed=3, min_offset=3, other_clip=0.0)
    for index in range(1, 200, 2):
        k, i = ds.pairs[index]
        cid = ds.clips.clip_id[k]
        faces = ds[index][0].numpy()
        # find which window of the same clip these faces are
        row = ds.clips.iloc[k]
        match = [
            j
            for j in align.valid_frames(int(row.n_frames), int(row.n_mel))
            if np.allclose(
                faces, store.frames(cid, j - 2, j + 3)[:, 48:].transpose(0, 3, 1, 2).reshape(15, 48, 96) / 255.0
            )
        ]
        assert match and all(abs(j - i) >= 3 for j in match), (index, i, match)


def test_deterministic_across_workers(store):
    ds = SyncDataset(store, seed=5)
    a = torch.stack([ds[i][0] for i in range(8)])
    loader = DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    b = torch.cat([batch[0] for _, batch in zip(range(2), loader)])
    assert torch.equal(a, b)
    ds.set_epoch(1)
    assert not torch.equal(torch.stack([ds[i][0] for i in range(1, 8, 2)]), a[1::2])


@pytest.mark.parametrize("t", [5, 7])
def test_generator_samples(store, t):
    ds = GeneratorDataset(store, seed=0, t=t)
    s = ds[3]
    assert s["target"].shape == (t, 3, 96, 96) and s["reference"].shape == (t, 3, 96, 96)
    assert s["mel"].shape == (t, 1, 80, 16) and s["lip"].shape == (t, 3, 5, 96, 96)
    assert s["target"].min() >= -1 and s["target"].max() <= 1
    assert torch.all(s["masked"][:, :, 48:] == 0) and torch.equal(s["masked"][:, :, :48], s["target"][:, :, :48])
    assert torch.all(s["lip"][:, :, :, :48] == 0)
    # lip window m is centred on target m: its middle frame's lower half is the target's
    assert torch.equal(s["lip"][:, :, 2, 48:], s["target"][:, :, 48:])
    t0 = s["start"]
    refs = store.frames(s["clip_id"])
    ref_frames = (s["reference"] + 1) / 2 * 255
    starts = [
        r for r in range(29 - t + 1) if np.allclose(ref_frames.permute(0, 2, 3, 1).numpy(), refs[r : r + t], atol=0.5)
    ]
    assert starts and all(abs(r - t0) >= t for r in starts)


def test_broken_sample_names_the_clip(store, tmp_path):
    index = store.index.copy()
    index.loc[0, "frame_offset"] = 10_000_000  # frames that are not in the shard
    broken = Store(store.root, index=index)
    ds = GeneratorDataset(broken, splits=tuple(set(index.split)), seed=0)
    bad = [n for n, (k, i) in enumerate(ds.pairs) if ds.clips.clip_id[k] == index.clip_id[0]][0]
    with pytest.raises(SampleError, match=f"clip {index.clip_id[0]}.*index and shard disagree"):
        ds[bad]


def test_augmentation_is_one_per_clip_and_warps_the_mel_along_frequency():
    rng = np.random.default_rng(0)
    window = torch.from_numpy(rng.random((1, 15, 48, 96), dtype=np.float32))
    mel_win = torch.from_numpy(rng.uniform(-4, 4, (1, 1, 80, 16)).astype(np.float32))
    faces, mel = window.repeat(4, 1, 1, 1), mel_win.repeat(4, 1, 1, 1)
    groups = torch.tensor([0, 0, 1, 1])
    out_faces, out_mel = augment_groups(faces, mel, groups, np.random.default_rng(3))
    assert out_faces.shape == faces.shape and out_mel.shape == mel.shape
    assert 0.0 <= out_faces.min() and out_faces.max() <= 1.0 and out_mel.abs().max() <= 4.0
    # the windows of one clip get the same change, so a negative differs from a positive in timing only
    assert torch.equal(out_faces[0], out_faces[1]) and torch.equal(out_mel[0], out_mel[1])
    assert not torch.allclose(out_faces[0], out_faces[2]) and not torch.allclose(out_mel[0], out_mel[2])
    assert not torch.allclose(out_faces[0], faces[0]) and not torch.allclose(out_mel[0], mel[0])

    ramp = torch.arange(80.0).view(1, 1, 80, 1).repeat(3, 1, 1, 16)
    warped = warp_mel(ramp, np.array([1.0, 0.9, 1.1]))
    assert torch.allclose(warped[0], ramp[0], atol=1e-4)
    # bin b takes bin b * factor; bin 0 stays, and the top is held at the last bin
    assert torch.allclose(warped[1, 0, :, 0], torch.arange(80.0) * 0.9, atol=1e-3)
    assert torch.allclose(warped[2, 0, :72, 0], torch.arange(72.0) * 1.1, atol=1e-3)
    assert torch.allclose(warped[2, 0, 72:, 0], torch.full((8,), 79.0), atol=1e-3)
