"""The memory analysis (pipeline/evaluate/memory_analysis.py) on inputs whose answer is known:
synthetic addresses with known information, and tiny generators whose decoder reads the memory
readout or ignores it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.evaluate import memory_analysis as ma
from pipeline.models.generator import Generator, intervene
from pipeline.models.syncnet import SyncNet


def one_hot(idx, slots):
    a = np.full((len(idx), slots), 0.0)
    a[np.arange(len(idx)), idx] = 1.0
    return a


def test_one_hot_phoneme_to_slot_addresses_carry_log_phonemes_and_uniform_ones_nothing():
    rng = np.random.default_rng(0)
    phonemes = rng.integers(0, 8, 4000)
    slot_of = rng.permutation(96)[:8]
    addr = one_hot(slot_of[phonemes], 96)
    assert ma.address_information(addr) == pytest.approx(np.log(8), abs=0.01)
    info, raw = ma.label_information(phonemes, addr.argmax(1))
    assert info == pytest.approx(np.log(8), abs=0.02) and raw >= info
    assert ma.slots_used(addr) == 8 and ma.effective_slots(addr) == pytest.approx(1.0)

    uniform = np.full((4000, 96), 1 / 96)
    assert ma.address_information(uniform) == pytest.approx(0.0, abs=1e-9)
    assert ma.effective_slots(uniform) == pytest.approx(96.0)
    assert ma.label_information(phonemes, uniform.argmax(1))[0] == 0.0

    # each frame its own slot among 96: the ceiling
    own = one_hot(np.arange(96 * 10) % 96, 96)
    assert ma.address_information(own) == pytest.approx(np.log(96))


def test_phoneme_information_is_corrected_for_the_bias_of_few_frames():
    rng = np.random.default_rng(1)
    labels, slots = rng.integers(0, 30, 300), rng.integers(0, 40, 300)  # independent
    info, raw = ma.label_information(labels, slots)
    assert raw > 0.5  # the plug-in estimate of nothing, with ~0.25 frames per cell
    assert info < 0.15


def test_mean_pairwise_cosine():
    assert ma.mean_pairwise_cosine(np.ones((5, 3))) == pytest.approx(1.0)
    assert ma.mean_pairwise_cosine(np.eye(4)) == pytest.approx(0.0)


def test_readout_interventions():
    r = torch.arange(12.0).reshape(6, 2)
    assert torch.equal(intervene(r, "as_is"), r)
    assert torch.equal(intervene(r, "zeroed"), torch.zeros_like(r))
    s = intervene(r, "shuffled")
    assert torch.equal(s, intervene(r, "shuffled"))  # seeded
    assert sorted(s[:, 0].tolist()) == r[:, 0].tolist() and not (s == r).all(1).any()  # a permutation, no row kept
    with pytest.raises(ValueError, match="readout_mode"):
        intervene(r, "reversed")


class FakeStore:
    """What sync_and_mouth reads of the store: a clip's uint8 crops and its mel."""

    def __init__(self, n_clips=2, n=13, size=96, seed=0):
        rng = np.random.default_rng(seed)
        self.clips = {
            f"c{k}": (
                rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8),
                rng.normal(0, 2, (n * 16 // 5 + 16, 80)).astype(np.float32),
            )
            for k in range(n_clips)
        }

    def frames(self, cid):
        return self.clips[cid][0]

    def mel(self, cid):
        return self.clips[cid][1]


def tiny_generator(reads: str) -> Generator:
    """A direct-output generator whose fusion sees only the memory readout (`memory`) or only the
    audio feature (`audio`: the memory is inert)."""
    torch.manual_seed(0)
    g = Generator(96, 0.125, slots=12, output="direct", dropout=0.0).eval()
    with torch.no_grad():
        w = g.fusion[1].weight
        half = w.shape[1] // 2
        if reads == "memory":
            w[:, :half] = 0.0
        else:
            w[:, half:] = 0.0
        g.memory.key.mul_(4.0)  # sharper addresses: frames read different slots
        g.memory.value.mul_(100.0)  # and slots far apart: a readout that changes changes the frame
    return g


@pytest.mark.parametrize("reads", ["memory", "audio"])
def test_causal_test_tells_a_decoder_that_reads_the_memory_from_one_that_does_not(reads):
    store = FakeStore()
    clips = pd.DataFrame({"clip_id": list(store.clips)})
    expert = SyncNet(96, 0.0625).eval()
    got = ma.sync_and_mouth(tiny_generator(reads), expert, store, clips)
    assert set(got) == set(ma.READOUTS)
    base = got["as_is"]["mouth_l1"]
    if reads == "memory":
        assert got["shuffled"]["mouth_l1"] != base and got["zeroed"]["mouth_l1"] != base
    else:
        assert got["shuffled"] == got["as_is"] == got["zeroed"]
    for values in got.values():
        assert 0 <= values["within1"] <= 1 and values["mouth_l1"] > 0


def test_the_readout_context_restores_the_mode_and_names_a_bad_one():
    g = tiny_generator("memory")
    with ma.readout(g, "zeroed"):
        assert g.readout_mode == "zeroed"
    assert g.readout_mode == "as_is"
    with pytest.raises(ValueError, match="readout mode"):
        with ma.readout(g, "nothing"):
            pass


def test_audio_drop_withholds_the_direct_audio_from_some_frames_in_training_only():
    from helpers import fake_batch

    torch.manual_seed(0)
    g = Generator(96, 0.125, slots=12, audio_drop=0.5)
    seen = []
    real_decode = g.decode
    g.decode = lambda audio, lip_feature, skips, base=None: (
        seen.append(audio.detach()) or real_decode(audio, lip_feature, skips, base)
    )
    b = fake_batch(b=8, t=5)
    g.train()
    out = g(b["masked"], b["reference"], b["mel"], b["lip"])
    dropped = [(a.abs().sum(1) == 0).float().mean().item() for a in seen]
    assert len(dropped) == 2 and dropped[0] == dropped[1]  # both decodes, the same frames
    assert 0.3 < dropped[0] < 0.7
    # and the decoder's L1 then reaches the memory's keys, values and audio projection
    torch.nn.functional.l1_loss(out["audio_frames"], b["target"]).backward()
    for p in (g.memory.key, g.memory.value, g.memory.audio_proj.weight):
        assert float(p.grad.abs().sum()) > 0
    seen.clear()
    g.eval()
    with torch.no_grad():
        g(b["masked"], b["reference"], b["mel"])
    assert (seen[0].abs().sum(1) > 0).all()
    assert (
        Generator(96, 0.125, use_memory=False, audio_drop=0.5).config()["audio_drop"] == 0.0
    )  # nothing to read instead
    with pytest.raises(ValueError, match="audio_drop"):
        Generator(96, 0.125, audio_drop=1.0)


def test_batch_normalised_queries_spread_the_addresses():
    torch.manual_seed(0)
    feats = torch.relu(torch.randn(256, 64) + 3.0)  # post-ReLU features: one large shared direction
    from pipeline.models.memory import AudioLipMemory

    plain, normed = AudioLipMemory(64, 96), AudioLipMemory(64, 96, query_norm="batch")
    normed.load_state_dict(plain.state_dict(), strict=False)
    info = lambda m: ma.address_information(m.recall(feats)["audio_address"].detach().numpy())
    assert info(normed) > 3 * info(plain)
    with pytest.raises(ValueError, match="query_norm"):
        AudioLipMemory(64, 96, query_norm="layer")


def test_mean_pairwise_cosine_needs_no_n_by_n_matrix_and_agrees_with_one():
    v = np.random.default_rng(3).normal(size=(300, 16)) + 0.5
    u = v / np.linalg.norm(v, axis=1, keepdims=True)
    g = u @ u.T
    assert ma.mean_pairwise_cosine(v) == pytest.approx((g.sum() - np.trace(g)) / (300 * 299))


def test_within_clip_share_tells_speaker_features_from_frame_features():
    rng = np.random.default_rng(0)
    speakers = [np.tile(rng.normal(size=(1, 8)) * 5, (30, 1)) + rng.normal(size=(30, 8)) * 0.1 for _ in range(6)]
    frames = [rng.normal(size=(30, 8)) for _ in range(6)]
    assert ma.within_clip_fraction(speakers) < 0.01
    assert ma.within_clip_fraction(frames) > 0.9
    assert ma.within_clip_fraction([np.ones((5, 3)), np.ones((5, 3))]) == 0.0
