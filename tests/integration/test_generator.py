"""The SyncTalkFace generator: shapes, the memory, where each loss's gradients go, learning,
exact resume, DDP with gloo, the NaN guard, the stage for both variants, and the proof on a
short run (talking_blobs)."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import talking_blobs
import torch
from helpers import default_params, fake_batch, run_cli, tiny_expert

from pipeline.errors import PipelineError
from pipeline.models import memory as mem
from pipeline.models.discriminator import QualityDiscriminator
from pipeline.models.generator import Generator
from pipeline.models.syncnet import SyncNet
from pipeline.stages import StageContext
from pipeline.train import gen_losses, gen_step, loop
from pipeline.train import generator as gen_stage

WEIGHTS = {"l1": 10.0, "store": 0.2, "align": 0.2, "av_sync": 0.2, "vv_sync": 0.2, "gan": 0.2}


def frozen_expert(size=96):
    e = SyncNet(size, 0.125).eval()
    for p in e.parameters():
        p.requires_grad_(False)
    return e


@pytest.mark.parametrize("size", [96, 128])
@pytest.mark.parametrize("t", [5, 7])
def test_shapes_both_variants_and_inference_without_lips(size, t):
    batch = fake_batch(2, t, size)
    for use_memory in (True, False):
        g = Generator(size, 0.125, use_memory=use_memory, slots=12)
        out = g(batch["masked"], batch["reference"], batch["mel"], batch["lip"])
        assert out["audio_frames"].shape == (2, t, 3, size, size)
        assert out["audio_frames"].abs().max() <= 1.0
        assert ("lip_frames" in out) == use_memory
        g.eval()
        only_audio = g(batch["masked"], batch["reference"], batch["mel"])  # inference: no lip encoder
        assert only_audio["audio_frames"].shape == (2, t, 3, size, size) and "lip_frames" not in only_audio
    faces, mels = gen_losses.expert_windows(batch["target"], batch["mel"])
    assert faces.shape == (2 * (t - 4), 15, size // 2, size) and mels.shape == (2 * (t - 4), 1, 80, 16)
    assert gen_losses.lip_windows(batch["target"]).shape == (2 * (t - 4), 3, 5, size, size)


def test_memory_addresses_are_distributions_and_raw_lip_path_differs():
    m = mem.AudioLipMemory(32, slots=10)
    out = m(torch.randn(6, 32), torch.randn(6, 32))
    for key in ("audio_address", "lip_address"):
        assert out[key].shape == (6, 10)
        assert torch.allclose(out[key].sum(-1), torch.ones(6), atol=1e-5) and (out[key] >= 0).all()
    assert 0 <= mem.usage_entropy(out["audio_address"]) <= np.log(10) + 1e-6
    torch.manual_seed(0)
    g = Generator(96, 0.125, slots=12).eval()
    b = fake_batch()
    # At initialisation the decoder's output depends only faintly on the bottleneck feature
    # (frames differ by ~1e-6), so the check is on what the second decoder pass is given.
    fed = []
    decode = g.decode
    g.decode = lambda audio, feature, skips, base=None: fed.append(feature) or decode(audio, feature, skips, base)
    recall = g(b["masked"], b["reference"], b["mel"], b["lip"], lip_path="value_recall")
    raw = g(b["masked"], b["reference"], b["mel"], b["lip"], lip_path="raw_lip")
    assert len(fed) == 4  # audio pass + lip pass, twice
    assert torch.equal(fed[0], recall["audio_read"]) and torch.equal(fed[2], raw["audio_read"])
    assert torch.equal(fed[1], recall["lip_read"]) and torch.equal(fed[3], raw["lip_proj"])
    assert (fed[1] - fed[3]).abs().mean() > 0.1 * fed[3].abs().mean()
    assert not torch.equal(recall["lip_frames"], raw["lip_frames"])


def grads(module: torch.nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


def test_gradient_routing_of_each_loss():
    torch.manual_seed(0)
    g = Generator(96, 0.125, slots=12)
    d = QualityDiscriminator(0.125)
    expert = frozen_expert()
    lip_copy = gen_losses.FrozenCopy(g.lip)
    b = fake_batch()

    def term(name):
        g.zero_grad(set_to_none=True)
        d.zero_grad(set_to_none=True)
        out = g(b["masked"], b["reference"], b["mel"], b["lip"])
        only = {k: (1.0 if k == name else 0.0) for k in WEIGHTS}
        total, parts = gen_losses.generator_losses(out, b, only, expert, lip_copy, d, use_gan=True)
        parts[name].backward()
        return out

    term("vv_sync")  # trains the generator through its output, never the lip encoder
    assert grads(g.lip) == 0 and grads(g.decoder) > 0 and grads(g.identity) > 0
    term("av_sync")  # the expert is frozen
    assert grads(g.decoder) > 0 and all(p.grad is None for p in expert.parameters())
    term("gan")  # (the training loop freezes D's parameters for the G step)
    assert grads(g.decoder) > 0
    term("align")  # the lip address is detached: the lip path gets nothing
    assert grads(g.lip) == 0 and grads(g.audio) > 0 and float(g.memory.key.grad.abs().sum()) > 0
    assert g.memory.lip_proj.weight.grad is None or float(g.memory.lip_proj.weight.grad.abs().sum()) == 0
    term("store")  # the memory learns; audio is not involved
    assert grads(g.audio) == 0 and float(g.memory.value.grad.abs().sum()) > 0

    # the store loss never moves its target: its gradient on the lip feature is the one through
    # the address alone, not the one a non-detached target would add
    lip = torch.randn(4, g.dim, requires_grad=True)
    out = g.memory(torch.randn(4, g.dim), lip)
    (got,) = torch.autograd.grad(mem.store_loss(out), lip, retain_graph=True)
    (undetached,) = torch.autograd.grad(torch.nn.functional.mse_loss(out["lip_read"], out["lip_proj"]), lip)
    out2 = g.memory(torch.randn(4, g.dim), lip)  # a fresh graph on the same lip feature
    (detached,) = torch.autograd.grad(torch.nn.functional.mse_loss(out2["lip_read"], out2["lip_proj"].detach()), lip)
    assert torch.allclose(got, detached, atol=1e-7) and not torch.allclose(got, undetached, atol=1e-7)


def test_residual_output_starts_at_the_composite_and_learns_away_from_it():
    torch.manual_seed(0)
    b = fake_batch()
    g = Generator(96, 0.125, slots=12, output="residual")
    out = g(b["masked"], b["reference"], b["mel"], b["lip"])
    half = 48
    composite = torch.cat([b["masked"][..., :half, :], b["reference"][..., half:, :]], dim=-2).clamp(-0.999, 0.999)
    for key in ("audio_frames", "lip_frames"):
        assert torch.allclose(out[key], composite, atol=1e-5), key
    opt = torch.optim.Adam(g.parameters(), lr=1e-3)
    for _ in range(3):
        out = g(b["masked"], b["reference"], b["mel"], b["lip"])
        loss = torch.nn.functional.l1_loss(out["audio_frames"], b["target"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert grads(g.identity) > 0 and grads(g.audio) > 0  # past the zero-initialised last layer
    assert not torch.allclose(out["audio_frames"], composite, atol=1e-3)
    assert Generator(96, 0.125, slots=12).config()["output"] == "direct"  # the paper's, unless asked
    with pytest.raises(ValueError, match="residual"):
        Generator(96, 0.125, output="blend")


@pytest.mark.parametrize("size", [96, 128])
def test_blurred_base_starts_without_the_reference_mouth_and_keeps_the_rest(size):
    """`base_mouth: blurred`: the residual starts from the composite with its mouth region reduced to
    the reference's colours, so the reference's lip shape is not where training starts."""
    from pipeline.geometry import MOUTH_BOX
    from pipeline.models.generator import blur_mouth
    from pipeline.nets.metrics import mouth_box

    torch.manual_seed(0)
    b = fake_batch(size=size)
    y0, y1, x0, x1 = mouth_box(size)
    # two references equal but for the mouth: one closed (flat skin), one wide open (a dark band)
    ref = torch.full((2, 5, 3, size, size), 0.3)
    my, mx = size * 10 // 96, size * 8 // 96  # an open mouth: a dark band inside the box
    ref[0, ..., y0 + my : y1 - my, x0 + mx : x1 - mx] = -0.9
    g = Generator(size, 0.125, slots=12, output="residual", base_mouth="blurred")
    with torch.no_grad():
        out = g(b["masked"], ref, b["mel"], b["lip"])["audio_frames"]
    composite = Generator.composite(b["masked"], ref).clamp(-0.999, 0.999)
    far = torch.ones(size, size, dtype=torch.bool)
    far[y0 - 8 : y1 + 8, x0 - 8 : x1 + 8] = False
    assert torch.allclose(out[..., far], composite[..., far], atol=1e-5)  # all but the mouth box: the composite
    box = (slice(None), slice(None), slice(y0 + 5, y1 - 5), slice(x0 + 5, x1 - 5))  # inside the feathering
    open_, closed = out[0][box], out[1][box]
    # the composite's lips have edges of 1.2 between neighbouring pixels; the blurred start has
    # none: what is left of an open mouth is a smooth shade (its darkness spread over the box)
    step = lambda x: max((x[..., 1:, :] - x[..., :-1, :]).abs().amax(), (x[..., 1:] - x[..., :-1]).abs().amax())
    assert step(composite[0][box]) > 1.1 and step(open_) < 0.1
    # at most two thirds of the 1.2 contrast is left anywhere
    assert (open_ - closed).abs().amax() < 0.8 and (open_ - closed).mean() < -0.1
    assert (
        closed - 0.3
    ).abs().amax() < 0.05  # a mouth-free reference stays (but for the cells it shares with the nose)
    # the coarse colours cover the whole crop in 6 x 6 cells at any size: a frame whose left and
    # right halves differ keeps its edge in the middle, not shifted by cells that miss the border
    halves = torch.full((1, 3, size, size), -0.5)
    halves[..., size // 2 :] = 0.5
    row = blur_mouth(halves, (0.0, 1.0, 0.0, 1.0))[0, 0, size // 2]
    assert torch.allclose(row, -row.flip(0), atol=1e-5)  # antisymmetric about the crop's centre
    assert g.config()["base_mouth"] == "blurred" and g.config()["blur_box"] == list(MOUTH_BOX)
    assert Generator(**g.config()).blur_box == g.blur_box  # the checkpoint's config rebuilds the same start
    assert Generator(size, 0.125).config()["base_mouth"] == "reference"
    with pytest.raises(ValueError, match="blur_box"):
        Generator(size, 0.125, blur_box=(0.9, 0.5, 0.2, 0.8))
    with pytest.raises(ValueError, match="base_mouth"):
        Generator(size, 0.125, base_mouth="mean")


def test_networks_keep_convolutions_channels_last_with_unchanged_state_dicts():
    """models/layout.py: conv weights (a spectral-normed layer's original too) are channels-last;
    names, shapes and values are not, so a state dict moves between layouts and gives the same output."""
    torch.manual_seed(0)
    b = fake_batch()
    nets = {
        "generator": Generator(96, 0.125, slots=12, output="residual"),
        "discriminator": QualityDiscriminator(0.125),
        "expert": SyncNet(96, 0.125),
    }
    for name, net in nets.items():
        convs = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
        assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs), name
        plain = type(net)(**net.config()) if name != "discriminator" else QualityDiscriminator(0.125)
        for p in plain.parameters():
            p.data = p.data.contiguous()
        plain.load_state_dict(net.state_dict())
        assert all(p.is_contiguous() for p in plain.state_dict().values()) and not all(
            p.is_contiguous() for p in net.state_dict().values()
        ), name
        net.eval(), plain.eval()
        with torch.no_grad():
            if name == "generator":
                outs = [m(b["masked"], b["reference"], b["mel"])["audio_frames"] for m in (net, plain)]
            elif name == "discriminator":
                outs = [m(b["target"][:, 0]) for m in (net, plain)]
            else:
                faces = (b["target"][:, :, :, 48:] + 1).reshape(2, 15, 48, 96) / 2
                outs = [torch.cat(m(b["mel"][:, 2], faces), 1) for m in (net, plain)]
        assert torch.allclose(*outs, atol=1e-5), name


def test_sync_term_is_left_out_during_its_warm_up():
    torch.manual_seed(0)
    g, expert, b = Generator(96, 0.125, slots=12), frozen_expert(), fake_batch()
    out = g(b["masked"], b["reference"], b["mel"], b["lip"])
    on, parts_on = gen_losses.generator_losses(out, b, WEIGHTS, expert, None, None, use_gan=False)
    off, parts_off = gen_losses.generator_losses(out, b, WEIGHTS, expert, None, None, use_gan=False, use_sync=False)
    assert torch.allclose(on - off, WEIGHTS["av_sync"] * parts_on["av_sync"])
    assert torch.allclose(parts_off["av_sync"], parts_on["av_sync"]) and not parts_off["av_sync"].requires_grad


def test_audio_encoder_can_start_from_the_experts():
    torch.manual_seed(0)
    expert = frozen_expert()
    g = Generator(96, 0.125, slots=12)
    theirs = expert.audio_encoder.state_dict()
    assert any(not torch.equal(v, theirs[k]) for k, v in g.audio.state_dict().items())
    gen_step.init_audio_from_expert(g, expert)
    for k, v in g.audio.state_dict().items():
        assert torch.equal(v, theirs[k]), k
    # a copy: training the generator's encoder leaves the frozen expert as it was
    assert all(p.requires_grad for p in g.audio.parameters())
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(g.audio.parameters(), expert.audio_encoder.parameters()))
    mel = fake_batch()["mel"][:, 0]
    g.eval()  # BatchNorm running statistics were copied too: in eval mode both encoders agree
    assert torch.allclose(g.encode_audio(mel), expert.audio_encoder(mel).flatten(1))
    with pytest.raises(PipelineError, match=r"audio_width, or its width when that is null, == generator.width"):
        gen_step.init_audio_from_expert(Generator(96, 0.25, slots=12), expert)


def test_the_lip_encoder_can_be_the_experts_frozen_face_encoder(tmp_path):
    from pipeline.nets import generate as gen

    torch.manual_seed(0)
    expert = SyncNet(96, 0.25).eval()  # wider than the generator: the lip projection maps its width
    view = {
        "preprocess": {"img_size": 96},
        "generator": {
            "width": 0.125,
            "slots": 12,
            "dropout": 0.5,
            "address_scale": 16.0,
            "output": "residual",
            "base_mouth": "blurred",
            "query_norm": "batch",
            "audio_drop": 0.5,
            "lip_encoder": "expert",
        },
    }
    with pytest.raises(PipelineError, match="lip_encoder: expert needs the sync expert"):
        gen_step.build(view, "memory")
    g, _ = gen_step.build(view, "memory", expert)
    assert gen_step.build(view, "no_memory", expert)[0].lip is None
    b = fake_batch()
    wins = gen_losses.lip_windows(b["target"])
    faces, _ = gen_losses.expert_windows(b["target"], b["mel"])  # the same windows as the expert sees them
    g.train()  # stays in eval mode: the expert's batch statistics
    assert not g.lip.training
    assert torch.allclose(g.lip(wins), expert.face_encoder(faces).flatten(1), atol=1e-6)
    assert g.memory.lip_proj.in_features == expert.embed_dim and g.memory.lip_proj.out_features == g.dim

    # every loss together: nothing reaches the frozen encoder or the expert; the lip projection and
    # the memory learn from the store term, the audio encoder from align
    d = QualityDiscriminator(0.125)
    out = g(b["masked"], b["reference"], b["mel"], b["lip"])
    total, parts = gen_losses.generator_losses(
        out, b, WEIGHTS, frozen_expert(), gen_losses.FrozenCopy(g.lip), d, use_gan=True
    )
    total.backward()
    assert all(p.grad is None and not p.requires_grad for p in g.lip.parameters())
    assert all(p.grad is None for p in expert.parameters())
    assert grads(g.memory.lip_proj) > 0 and grads(g.audio) > 0 and float(g.memory.value.grad.abs().sum()) > 0

    # its VV term is the expert's gradient as the AV term is: both wait for the sync warm-up
    out = g(b["masked"], b["reference"], b["mel"], b["lip"])
    total_w, parts_w = gen_losses.generator_losses(
        out, b, WEIGHTS, frozen_expert(), gen_losses.FrozenCopy(g.lip), d, use_gan=False, use_sync=False, expert_vv=True
    )
    assert not parts_w["vv_sync"].requires_grad and not parts_w["av_sync"].requires_grad
    assert torch.allclose(
        total_w,
        WEIGHTS["l1"] * (parts_w["l1"] + parts_w["l1_lip"])
        + WEIGHTS["store"] * parts_w["store"]
        + WEIGHTS["align"] * parts_w["align"],
    )
    _, own = gen_losses.generator_losses(
        out, b, WEIGHTS, frozen_expert(), gen_losses.FrozenCopy(g.lip), d, use_gan=False, use_sync=False
    )
    assert own["vv_sync"].requires_grad  # a lip encoder of its own: VV from the first step, as the paper

    # the checkpoint holds the encoder's weights and rebuilds it
    torch.save(gen.package_generator(g, 1, {}), tmp_path / "g.pt")
    again = gen.load_generator(tmp_path / "g.pt")
    assert again.config()["lip_encoder"] == {"kind": "expert", "width": 0.25, "input_channels": "rgb"}
    assert torch.equal(again.lip(wins), g.lip(wins))
    with pytest.raises(ValueError, match="lip_encoder must be"):
        Generator(96, 0.125, lip_encoder={"kind": "other"})
    with pytest.raises(PipelineError, match="expert of the generator's image size"):
        gen_step.build({**view, "preprocess": {"img_size": 128}}, "memory", expert)


def test_the_lip_path_decode_can_take_every_term_and_the_fusion_can_be_linear():
    torch.manual_seed(0)
    b = fake_batch()
    expert, d = frozen_expert(), QualityDiscriminator(0.125)
    g = Generator(96, 0.125, slots=12, fusion="linear", dropout=0.0)
    assert not any(isinstance(m, torch.nn.ReLU) for m in g.fusion)
    assert isinstance(Generator(96, 0.125, slots=12).fusion[-1], torch.nn.ReLU)
    with pytest.raises(ValueError, match="fusion must be relu or linear"):
        Generator(96, 0.125, fusion="gelu")
    out = g(b["masked"], b["reference"], b["mel"], b["lip"])
    lip_copy = gen_losses.FrozenCopy(g.lip)
    _, only_l1 = gen_losses.generator_losses(out, b, WEIGHTS, expert, lip_copy, d, use_gan=True)
    total, parts = gen_losses.generator_losses(out, b, WEIGHTS, expert, lip_copy, d, use_gan=True, both_decodes=True)
    assert not any(k.endswith("_lip") and k != "l1_lip" for k in only_l1)
    assert {"av_sync_lip", "vv_sync_lip", "gan_lip"} <= set(parts)
    expected = (
        WEIGHTS["l1"] * (parts["l1"] + parts["l1_lip"])
        + sum(WEIGHTS[n] * (parts[n] + parts[f"{n}_lip"]) for n in ("av_sync", "vv_sync", "gan"))
        + WEIGHTS["store"] * parts["store"]
        + WEIGHTS["align"] * parts["align"]
    )
    assert torch.allclose(total, expected)
    # the lip-path decode's sync term trains what that decode reads: the lip-addressed readout
    g.zero_grad(set_to_none=True)
    parts["av_sync_lip"].backward(retain_graph=True)
    assert float(g.memory.value.grad.abs().sum()) > 0 and grads(g.lip) > 0
    # the whole total backpropagates: both VV terms share one refresh of the lip encoder's copy
    g.zero_grad(set_to_none=True)
    total.backward(retain_graph=True)
    assert float(g.memory.value.grad.abs().sum()) > 0 and grads(g.lip) > 0
    # during the sync warm-up both AV terms stay out of the total
    total_w, parts_w = gen_losses.generator_losses(
        out, b, WEIGHTS, expert, lip_copy, d, use_gan=False, use_sync=False, both_decodes=True
    )
    assert not parts_w["av_sync_lip"].requires_grad


def test_overfitting_a_fixed_batch_drives_l1_down():
    torch.manual_seed(0)
    g = Generator(96, 0.125, slots=12, dropout=0.0)
    b = fake_batch(2, 5)
    b["target"] = torch.nn.functional.avg_pool2d(b["target"].flatten(0, 1), 9, 1, 4).reshape(b["target"].shape)
    opt = torch.optim.Adam(g.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        out = g(b["masked"], b["reference"], b["mel"], b["lip"])
        loss = torch.nn.functional.l1_loss(out["audio_frames"], b["target"]) + torch.nn.functional.l1_loss(
            out["lip_frames"], b["target"]
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::8]


# ------------------------------------------------------------------ the stage on real data
def tiny_view(params, **changes):
    cfg = {
        **params["generator"],
        **dict(
            width=0.125,
            batch_size=2,
            max_steps=4,
            eval_every=2,
            checkpoint_every=2,
            gan_warmup=2,
            sync_warmup=2,
            val_samples=4,
            log_every=1,
            slots=12,
        ),
        **changes,
    }
    return {"data": {"dataset": "lrw"}, "preprocess": {"img_size": 96}, "generator": cfg}


def project_with_expert(proj, tmp_path):
    """A project folder of its own that shares the processed data and the trained expert."""
    mine = tmp_path / "proj"
    mine.mkdir()
    os.symlink(proj / "data", mine / "data")
    (mine / "models").mkdir()
    os.symlink(proj / "models/sync_expert", mine / "models/sync_expert")
    return mine


@pytest.fixture
def in_expert_project(expert_project, monkeypatch):
    proj, params = expert_project
    monkeypatch.chdir(proj)
    return proj, params


def test_resume_is_exact(in_expert_project, tmp_path):
    _, params = in_expert_project
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    gen_stage.train_worker(0, 1, tiny_view(params, max_steps=6), "memory", str(a), None)
    gen_stage.train_worker(0, 1, tiny_view(params, max_steps=3), "memory", str(b), None)
    assert loop.load_checkpoint(b / "checkpoint.pt")["step"] == 3
    gen_stage.train_worker(0, 1, tiny_view(params, max_steps=6), "memory", str(b), None)
    sa, sb = loop.load_checkpoint(a / "checkpoint.pt"), loop.load_checkpoint(b / "checkpoint.pt")
    for net in ("generator", "discriminator"):
        for k in sa[net]:
            assert torch.equal(sa[net][k], sb[net][k]), (net, k)
    assert [r["loss"] for r in sa["history"]] == [r["loss"] for r in sb["history"]]
    assert "gan" in sa["history"][-1] and "gan" not in sa["history"][0]  # the warm-up ends at step 2


def test_learning_rates_decay_from_lr_decay_from_to_zero_at_max_steps(in_expert_project, tmp_path):
    cfg = {"lr_decay_from": 200, "max_steps": 300}
    assert [gen_step.lr_factor(cfg, s) for s in (0, 199, 200)] == [1.0, 1.0, 1.0]
    assert gen_step.lr_factor(cfg, 250) == pytest.approx(0.5)
    assert gen_step.lr_factor(cfg, 299) == pytest.approx(0.0, abs=3e-4)
    assert gen_step.lr_factor({"lr_decay_from": 300, "max_steps": 300}, 299) == 1.0  # constant
    # the stage sets both optimisers' rates from the step alone, so a resumed run has the same ones
    _, params = in_expert_project
    view = tiny_view(params, max_steps=6, lr_decay_from=2, lr_g=1e-3, lr_d=2e-3)
    rt = loop.worker_setup(False, 0, 1)
    ts = gen_step.TrainState(view, "memory", rt, frozen_expert())
    ts.set_lr(4)
    assert ts.opt_g.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5)
    assert ts.opt_d.param_groups[0]["lr"] == pytest.approx(2e-3 * 0.5)
    # and the training loop applies it: the last step (5) of a 6-step run used factor lr_factor(5)
    gen_stage.train_worker(0, 1, view, "memory", str(tmp_path), None)
    state = loop.load_checkpoint(tmp_path / "checkpoint.pt")
    last = gen_step.lr_factor(view["generator"], 5)
    assert 0 < last < 0.2
    assert state["opt_g"]["param_groups"][0]["lr"] == pytest.approx(1e-3 * last)
    assert state["opt_d"]["param_groups"][0]["lr"] == pytest.approx(2e-3 * last)


def test_the_gan_weight_ramps_up_after_its_warm_up(in_expert_project, tmp_path):
    cfg = {"gan_warmup": 2, "gan_ramp": 4}
    assert [gen_step.gan_scale(cfg, s) for s in range(8)] == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert [gen_step.gan_scale({"gan_warmup": 2, "gan_ramp": 0}, s) for s in (1, 2, 9)] == [0.0, 1.0, 1.0]
    # the training loop weights the logged GAN term by it: each step's total is the weighted sum
    _, params = in_expert_project
    view = tiny_view(params, max_steps=5, gan_ramp=4, weights={**params["generator"]["weights"], "gan": 0.5})
    gen_stage.train_worker(0, 1, view, "memory", str(tmp_path), None)
    w = view["generator"]["weights"]
    history = loop.load_checkpoint(tmp_path / "checkpoint.pt")["history"]
    assert view["generator"]["lip_encoder"] == "expert"  # its VV term waits for the sync warm-up too
    for k, row in enumerate(history):  # row k is step k
        rest = w["l1"] * (row["l1"] + row["l1_lip"]) + sum(w[n] * row[n] for n in ("store", "align"))
        rest += (
            w["av_sync"] * row["av_sync"] + w["vv_sync"] * row["vv_sync"]
            if k >= view["generator"]["sync_warmup"]
            else 0.0
        )
        gan = w["gan"] * gen_step.gan_scale(view["generator"], k) * row.get("gan", 0.0)
        assert row["loss"] == pytest.approx(rest + gan, rel=1e-5), k
    assert "gan" in history[3] and history[3]["gan"] > 0  # step 3: weight 0.5 x 0.5


def test_stage_starts_the_audio_encoder_from_the_expert_when_asked(in_expert_project):
    from pipeline import paths
    from pipeline.nets.expert import load_expert

    _, params = in_expert_project
    rt = loop.worker_setup(False, 0, 1)
    expert = load_expert(paths.model_dir("sync_expert") / "expert.pt")
    width = expert.config()["width"]
    theirs = expert.audio_encoder.state_dict()
    ts = gen_step.TrainState(tiny_view(params, width=width, audio_init="expert"), "memory", rt, expert)
    assert all(torch.equal(v, theirs[k]) for k, v in ts.g.audio.state_dict().items())
    ts = gen_step.TrainState(tiny_view(params, width=width, audio_init="random"), "memory", rt, expert)
    assert not all(torch.equal(v, theirs[k]) for k, v in ts.g.audio.state_dict().items())
    with pytest.raises(PipelineError, match="generator.audio_init: expert"):
        gen_step.TrainState(tiny_view(params, width=2 * width, audio_init="expert"), "memory", rt, expert)
    # the stage says so before it starts any worker
    with pytest.raises(PipelineError, match=f"audio encoder is at width {width} != generator.width {2 * width}"):
        gen_stage.run(tiny_view(params, width=2 * width, audio_init="expert"), StageContext(variant="memory"))


def test_ddp_two_gloo_processes(in_expert_project, tmp_path):
    _, params = in_expert_project
    work = tmp_path / "ddp"
    work.mkdir()
    loop.run_workers(gen_stage.train_worker, 2, tiny_view(params, max_steps=2, processes=2), "memory", str(work), None)
    state = loop.load_checkpoint(work / "checkpoint.pt")
    assert state["step"] == 2 and json.loads((work / "done.json").read_text())["step"] == 2


def test_a_non_finite_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(
    in_expert_project, tmp_path, monkeypatch
):
    _, params = in_expert_project
    real = gen_losses.generator_losses
    calls = []

    def poisoned(*args, **kwargs):
        total, parts = real(*args, **kwargs)
        calls.append(1)
        return (total * float("nan"), parts) if len(calls) > 2 else (total, parts)

    monkeypatch.setattr(gen_step, "generator_losses", poisoned)
    work = tmp_path / "nan"
    work.mkdir()
    with pytest.raises(PipelineError, match=r"not finite at step 2.*last good checkpoint \(step 2\)"):
        gen_stage.train_worker(0, 1, tiny_view(params, max_steps=6), "memory", str(work), None)
    assert loop.load_checkpoint(work / "checkpoint.pt")["step"] == 2


@pytest.mark.parametrize("variant", ["no_memory", "memory"])
def test_stage_writes_model_metrics_plot(expert_project, tmp_path, variant):
    import yaml

    proj, params = expert_project
    mine = project_with_expert(proj, tmp_path)
    p = dict(params)
    p["generator"] = tiny_view(params, max_steps=4, base_mouth="reference")["generator"]
    (mine / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    run_cli(["train_generator", "--variant", variant], cwd=mine, check=True)
    metrics = json.loads((mine / f"metrics/train_generator_{variant}.json").read_text())
    assert metrics["steps"] == 4 and metrics["excluded_clips"] >= 1
    for key in ("val_l1", "val_psnr_mouth", "final_mouth_psnr", "composite_mouth_psnr", "final_sync_confidence"):
        assert np.isfinite(metrics[key]), key
    # the residual output from the reference's mouth starts at the composite and 4 steps barely
    # move it: the final check's composite is the one the model builds from the same reference frames
    assert p["generator"]["output"] == "residual"
    assert metrics["final_mouth_l1"] == pytest.approx(metrics["composite_mouth_l1"], abs=2e-3)
    plot = pd.read_csv(mine / f"plots/train_generator_{variant}.csv")
    assert list(plot.step) == [1, 2, 3, 4] and plot.val_l1.notna().sum() == 2
    assert (plot.store.notna().all()) == (variant == "memory")
    from pipeline.nets.generate import load_generator

    g = load_generator(mine / f"models/generator/{variant}/generator.pt")
    assert g.use_memory == (variant == "memory")
    assert (mine / f"models/generator/{variant}/samples.png").is_file()
    assert not list(mine.glob("work/train_generator/*"))
    bad = run_cli(
        [
            "train_generator",
            "--variant",
            "memory" if variant == "no_memory" else "no_memory",
            "--params",
            "missing.yaml",
        ],
        cwd=mine,
    )
    assert bad.returncode != 0


# the proof run: the default recipe at test size (the learning rate held: no decay in 150 steps).
# The expert trained for 10 steps knows nothing, so its sync term stays off (sync_warmup =
# max_steps): the proof rests on the L1, memory and GAN terms. 150 steps take ~95 s on 2 cores
# (at 100 steps the mouth is still a blur that scores below the composite; at 300 it scores
# 25.4 dB against the composite's 16.1).
# The memory is the paper's here (its own lip encoder, no audio withheld): the default recipe's lip
# encoder is the expert's face encoder, and this expert knows nothing; with it, half the frames
# drawn from the readout alone scored mouth L1 0.111 against the composite's 0.076.
PROOF_RUN = dict(
    width=0.125,
    batch_size=4,
    max_steps=150,
    eval_every=75,
    checkpoint_every=75,
    log_every=10,
    lr_decay_from=150,
    gan_warmup=100,
    sync_warmup=150,
    val_samples=8,
    lip_encoder="own",
    audio_drop=0.0,
    query_norm="none",
    memory_lr_scale=1.0,
)


def test_a_short_run_beats_the_composite_with_a_mouth_that_follows_the_audio(tmp_path):
    """The issue's proof at test size: on talking faces whose mouth opening is a function of the
    audio's loudness (tests/talking_blobs.py), a short run of the real stages (expert, sync_check,
    generator) gives a `memory` generator that beats the composite baseline on the val clips'
    mouth region in L1 and PSNR, and whose mouths follow the audio: the same clips generated
    from another clip's audio are further from the truth."""
    import yaml

    from pipeline.io.store import Store
    from pipeline.nets import generate as gen
    from pipeline.nets.metrics import mouth

    talking_blobs.write_store(tmp_path / "data/processed/embedded", clips={"train": 24, "val": 6, "test": 2})
    p = default_params()
    p["sync_expert"].update(tiny_expert(max_steps=10, eval_every=5))
    p["sync_check"]["max_offset"] = 15  # the 10-step expert must not exclude clips
    p["generator"].update(PROOF_RUN)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    for args in (["train_sync_expert"], ["sync_check"], ["train_generator", "--variant", "memory"]):
        run_cli(args, cwd=tmp_path, check=True)
    m = json.loads((tmp_path / "metrics/train_generator_memory.json").read_text())
    assert m["final_clips"] == 6
    assert m["final_mouth_l1"] < m["composite_mouth_l1"], m
    assert m["final_mouth_psnr"] > m["composite_mouth_psnr"], m

    g = gen.load_generator(tmp_path / "models/generator/memory/generator.pt")
    store = Store(tmp_path / "data/processed/embedded")
    val = sorted(store.index.clip_id[store.index.split == "val"])
    own, other = [], []
    for k, cid in enumerate(val):
        frames = store.frames(cid)
        truth = mouth(frames[2:-2]).astype(np.float64)
        for mel, out in ((store.mel(cid), own), (store.mel(val[(k + 1) % len(val)]), other)):
            out.append(np.abs(mouth(gen.generate_clip(g, frames, mel)[2:-2]) - truth).mean() / 255.0)
    assert np.mean(own) < 0.8 * np.mean(other), (own, other)
