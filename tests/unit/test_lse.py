"""LSE-D / LSE-C: SyncNet v2's weight layout, the offset search, syncnet_python's inputs (real ffmpeg)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from pipeline.errors import PipelineError
from pipeline.evaluate import lse
from pipeline.io import ffmpeg
from pipeline.models.syncnet import SyncNet
from pipeline.models.syncnet_v2 import SyncNetV2
from pipeline.nets.expert import package_expert as package

N_FRAMES = 14


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A randomly initialised SyncNet v2 saved as the public file is: a flat name -> tensor dict."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model"
    torch.save(dict(SyncNetV2().state_dict()), path)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A real H.264/AAC mp4, 96x96 (the expert's size), reddish with texture, and a tone."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:96, 0:96]
    frames = []
    for t in range(N_FRAMES):
        red = 150 + 60 * np.sin((xx + 4 * t) / 7.0)
        green = 90 + 40 * np.cos((yy - 2 * t) / 5.0)
        frames.append(np.stack([red, green, np.full_like(red, 40.0)], -1) + rng.normal(0, 6, (96, 96, 3)))
    frames = np.clip(np.stack(frames), 0, 255).astype(np.uint8)
    ts = np.arange(N_FRAMES * 640) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 180 * ts) * (1 + np.sin(2 * np.pi * 3 * ts))).astype(np.float32) / 2
    path = tmp_path_factory.mktemp("lse_clip") / "clip.mp4"
    ffmpeg.write_mp4(path, frames, 25, audio, 16000)
    return path


# ----------------------------------------------------------------------------- (a) weights


def test_public_layout_loads_strictly(weights):
    state = torch.load(weights, map_location="cpu", weights_only=True)
    assert type(state) is dict and "netcnnlip.18.weight" in state and "netfcaud.3.weight" in state
    assert tuple(state["netcnnlip.0.weight"].shape) == (96, 3, 5, 7, 7)
    assert tuple(state["netcnnaud.18.weight"].shape) == (512, 256, 5, 4)
    assert tuple(state["netfclip.3.weight"].shape) == (1024, 512)
    SyncNetV2().load_state_dict(state, strict=True)
    model = lse.load_syncnet_v2(weights)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert torch.equal(model.state_dict()["netcnnaud.0.weight"], state["netcnnaud.0.weight"])
    # files saved by old PyTorch have no BatchNorm counters: they load too
    old = weights.with_name("old.model")
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, old)
    lse.load_syncnet_v2(old)


def test_bad_weights_name_the_file_and_the_problem(weights, tmp_path):
    state = torch.load(weights, map_location="cpu", weights_only=True)
    missing = tmp_path / "missing.model"
    torch.save({k: v for k, v in state.items() if k != "netfclip.0.weight"}, missing)
    with pytest.raises(PipelineError, match=r"missing\.model.*missing keys.*netfclip\.0\.weight"):
        lse.load_syncnet_v2(missing)
    shaped = tmp_path / "shaped.model"
    torch.save({**state, "netfcaud.3.weight": torch.zeros(512, 512)}, shaped)
    with pytest.raises(
        PipelineError, match=r"shaped\.model.*netfcaud\.3\.weight has shape \(512, 512\), expected \(1024, 512\)"
    ):
        lse.load_syncnet_v2(shaped)
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(PipelineError, match=r"garbage\.model: cannot be read"):
        lse.load_syncnet_v2(garbage)
    with pytest.raises(PipelineError, match=r"absent\.model.*not found"):
        lse.load_syncnet_v2(tmp_path / "absent.model")


# ----------------------------------------------------------------------------- (b) offset search


def _reference_mean_dists(v, a, vshift):
    """The original's loop, written out: video window i against padded audio rows i .. i+2*vshift."""
    win = 2 * vshift + 1
    padded = F.pad(a, (0, 0, vshift, vshift))
    rows = [F.pairwise_distance(v[[i], :].repeat(win, 1), padded[i : i + win]) for i in range(len(v))]
    return torch.stack(rows, 1).mean(1)


@pytest.mark.parametrize("k", [-4, 0, 3])
def test_offset_search_finds_a_known_shift(k):
    """Video window i shows what audio window i + k says: the audio lags by k windows."""
    rng = np.random.default_rng(k + 10)
    n = 40
    audio = torch.from_numpy(rng.normal(0, 1, (n, 64))).float()
    video = torch.from_numpy(rng.normal(0, 1, (n, 64))).float()
    for i in range(n):
        if 0 <= i + k < n:
            video[i] = audio[i + k] + 0.05 * torch.randn(64)
    offset, dmin, conf, dists = lse.offset_scores(video, audio, search=15)
    assert offset == k  # ours: > 0 when the audio lags; syncnet_python would print -k
    assert conf > 0 and len(dists) == 31 and dmin == pytest.approx(dists.min())
    reference = _reference_mean_dists(video, audio, 15).numpy()
    np.testing.assert_allclose(dists, reference, rtol=1e-6)
    assert 15 - int(np.argmin(reference)) == -offset  # syncnet_python's `vshift - minidx`
    assert conf == pytest.approx(float(np.median(reference) - reference.min()), rel=1e-5)


# ----------------------------------------------------------------------------- (c, d) inputs


def test_video_inputs_are_syncnet_pythons(clip, tmp_path):
    frames, mfcc, n_samples = lse.video_inputs(clip, tmp_path)
    assert frames.shape == (N_FRAMES, 224, 224, 3) and frames.dtype == np.uint8
    assert frames[..., 2].mean() > frames[..., 0].mean() + 60  # BGR: red last
    assert abs(n_samples - N_FRAMES * 640) <= 640
    assert mfcc.shape[0] == 13 and abs(mfcc.shape[1] - 4 * N_FRAMES) <= 20
    assert list(tmp_path.iterdir()) == []  # the JPEG folder is removed
    # the JPEG round trip is applied: close to the decoded frames, not equal to them
    decoded = ffmpeg.read_frames(clip)[..., ::-1]
    decoded = np.stack([cv2.resize(np.ascontiguousarray(f), (224, 224)) for f in decoded])
    diff = np.abs(frames.astype(np.int16) - decoded.astype(np.int16))
    assert 0.2 < diff.mean() < 8.0, diff.mean()


def test_score_videos_names_the_network(clip, weights, tmp_path):
    out = lse.score_videos([clip], syncnet_v2_path=weights)
    assert out["network"] == "syncnet_v2" and len(out["clips"]) == 1
    row = out["clips"][0]
    assert row["network"] == "syncnet_v2" and abs(row["offset"]) <= 15
    assert row["offset_syncnet_python"] == -row["offset"]
    assert out["lse_d"] == row["min_dist"] > 0 and out["lse_c"] == row["confidence"] >= 0

    torch.manual_seed(0)
    expert = tmp_path / "expert.pt"
    torch.save(package(SyncNet(96, 0.0625), 0, {}), expert)
    own = lse.score_videos([clip], network="own_expert", syncnet_v2_path=weights, expert_path=expert)
    assert own["network"] == own["clips"][0]["network"] == "own_expert"
    assert np.isfinite(own["lse_d"]) and own["lse_c"] >= 0
    with pytest.raises(PipelineError, match="syncnet_v2.model"):
        lse.score_videos([clip], network="syncnet_v2")
    with pytest.raises(PipelineError, match="nowhere.pt"):
        lse.score_videos([clip], expert_path=tmp_path / "nowhere.pt")


def test_windows_are_arranged_as_the_original(clip, weights, tmp_path):
    """Window i: frames i..i+4 as [1, 3, 5, 224, 224] and MFCC steps 4i..4i+19; L - 5 windows."""
    frames, mfcc, n_samples = lse.video_inputs(clip, tmp_path)
    model = lse.load_syncnet_v2(weights)
    v, a = lse.features(model, frames, mfcc, n_samples, batch=4)
    length = min(len(frames), n_samples // 640)
    assert v.shape == a.shape == (length - 5, 1024)
    im = np.transpose(np.expand_dims(np.stack(list(frames), axis=3), 0), (0, 3, 4, 1, 2))  # [1, 3, N, H, W]
    cc = torch.from_numpy(mfcc[None, None].astype(float)).float()
    with torch.no_grad():
        for i in (0, len(v) - 1):
            lip = model.forward_lip(torch.from_numpy(im[:, :, i : i + 5].astype(float)).float())
            aud = model.forward_aud(cc[:, :, :, 4 * i : 4 * i + 20])
            torch.testing.assert_close(v[i], lip[0], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(a[i], aud[0], rtol=1e-4, atol=1e-4)
