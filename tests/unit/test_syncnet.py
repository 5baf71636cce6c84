"""The sync expert's network: shapes, Wav2Lip weights and their input convention, the losses,
exact resume, and DDP with gloo."""

from __future__ import annotations

import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.models.syncnet import SyncNet, in_batch_contrastive, sync_bce, sync_probability
from pipeline.nets import expert
from pipeline.train.sync_expert import import_pretrained

# Wav2Lip's SyncNet_color, restated as (cin, cout, kernel) per block: the layout its
# lipsync_expert.pth has (models/syncnet.py + models/conv.py of Rudrabha/Wav2Lip).
W2L_FACE = [
    (15, 32, (7, 7)),
    (32, 64, (5, 5)),
    (64, 64, (3, 3)),
    (64, 64, (3, 3)),
    (64, 128, (3, 3)),
    (128, 128, (3, 3)),
    (128, 128, (3, 3)),
    (128, 128, (3, 3)),
    (128, 256, (3, 3)),
    (256, 256, (3, 3)),
    (256, 256, (3, 3)),
    (256, 512, (3, 3)),
    (512, 512, (3, 3)),
    (512, 512, (3, 3)),
    (512, 512, (3, 3)),
    (512, 512, (3, 3)),
    (512, 512, (1, 1)),
]
W2L_AUDIO = [
    (1, 32, (3, 3)),
    (32, 32, (3, 3)),
    (32, 32, (3, 3)),
    (32, 64, (3, 3)),
    (64, 64, (3, 3)),
    (64, 64, (3, 3)),
    (64, 128, (3, 3)),
    (128, 128, (3, 3)),
    (128, 128, (3, 3)),
    (128, 256, (3, 3)),
    (256, 256, (3, 3)),
    (256, 256, (3, 3)),
    (256, 512, (3, 3)),
    (512, 512, (1, 1)),
]


def wav2lip_checkpoint(path, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, spec in (("face_encoder", W2L_FACE), ("audio_encoder", W2L_AUDIO)):
        for i, (cin, cout, k) in enumerate(spec):
            p = f"module.{name}.{i}.conv_block"
            sd[f"{p}.0.weight"] = torch.randn(cout, cin, *k, generator=g) * (2 / (cin * k[0] * k[1])) ** 0.5
            sd[f"{p}.0.bias"] = torch.randn(cout, generator=g) * 0.01
            sd[f"{p}.1.weight"] = 1 + 0.1 * torch.randn(cout, generator=g)
            sd[f"{p}.1.bias"] = 0.1 * torch.randn(cout, generator=g)
            sd[f"{p}.1.running_mean"] = 0.1 * torch.randn(cout, generator=g)
            sd[f"{p}.1.running_var"] = 1 + 0.1 * torch.rand(cout, generator=g)
            sd[f"{p}.1.num_batches_tracked"] = torch.tensor(1000)
    torch.save({"state_dict": sd, "optimizer": {}, "global_step": 1}, path)
    return sd


@pytest.mark.parametrize("size", [96, 128])
@pytest.mark.parametrize("width", [1.0, 0.25])
def test_shapes(size, width):
    model = SyncNet(size, width).eval()
    a, v = model(torch.randn(3, 1, 80, 16), torch.rand(3, 15, size // 2, size))
    dim = 512 if width == 1.0 else 128
    assert a.shape == v.shape == (3, dim)
    assert torch.allclose(a.norm(dim=1), torch.ones(3)) and (a >= 0).all() and (v >= 0).all()
    p = sync_probability(a, v)
    assert ((p >= 0) & (p <= 1)).all()
    with pytest.raises((ValueError, RuntimeError)):  # a crop of the wrong size
        model(torch.randn(1, 1, 80, 16), torch.rand(1, 15, 20, 40))


def test_a_wider_audio_encoder_maps_to_the_face_embedding_and_survives_its_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = SyncNet(96, 0.25, audio_width=0.5).eval()
    plain = SyncNet(96, 0.25)
    widths = [m.out_channels for m in model.audio_encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert widths[0] == 16 and widths[-2] == 256 and widths[-1] == 128  # 2x the plain encoder's, then the embedding
    n_params = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert n_params(model.audio_encoder) > 3 * n_params(plain.audio_encoder)
    assert model.face_encoder.state_dict().keys() == plain.face_encoder.state_dict().keys()
    mel, faces = torch.randn(2, 1, 80, 16), torch.rand(2, 15, 48, 96)
    with torch.no_grad():
        a, v = model(mel, faces)
    assert a.shape == v.shape == (2, 128)
    torch.save(expert.package_expert(model, 5, {}), tmp_path / "expert.pt")
    loaded = expert.load_expert(tmp_path / "expert.pt")
    assert loaded.config() == model.config() and loaded.config()["audio_width"] == 0.5
    with torch.no_grad():
        assert torch.equal(loaded(mel, faces)[0], a)
    assert SyncNet(96, 0.25).config()["audio_width"] == 0.25  # null in params: the face encoder's width


def test_wav2lip_expert_loads_strict_and_converts_rgb_to_bgr(tmp_path):
    ckpt = tmp_path / "lipsync_expert.pth"
    sd = wav2lip_checkpoint(ckpt)
    model = expert.import_wav2lip(ckpt).eval()
    assert set(model.state_dict()) == {k[len("module.") :] for k in sd}
    assert model.input_channels == "bgr"
    torch.manual_seed(0)
    faces_rgb = torch.rand(2, 15, 48, 96)
    mel = torch.randn(2, 1, 80, 16)
    faces_bgr = faces_rgb.view(2, 5, 3, 48, 96)[:, :, [2, 1, 0]].reshape(2, 15, 48, 96)
    with torch.no_grad():
        a, v = model(mel, faces_rgb)
        v_direct = torch.nn.functional.normalize(model.face_encoder(faces_bgr).flatten(1), dim=1)
        v_unconverted = torch.nn.functional.normalize(model.face_encoder(faces_rgb).flatten(1), dim=1)
    assert torch.allclose(v, v_direct, atol=1e-6)
    assert not torch.allclose(v, v_unconverted, atol=1e-4)

    out = tmp_path / "models" / "sync_expert"
    import_pretrained(ckpt, out, 96)
    frozen = expert.load_expert(out / "expert.pt")
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    with torch.no_grad():
        assert torch.allclose(frozen(mel, faces_rgb)[1], v, atol=1e-6)
    with pytest.raises(PipelineError, match="128"):
        import_pretrained(ckpt, out, 128)


def test_wrong_layout_is_refused(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": {"module.face_encoder.0.weight": torch.zeros(1)}}, bad)
    with pytest.raises(PipelineError, match="not Wav2Lip's SyncNet_color layout"):
        expert.import_wav2lip(bad)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(PipelineError, match="cannot be read"):
        expert.import_wav2lip(junk)


def test_import_expert_command_sets_params(tmp_path):
    import yaml
    from helpers import REPO, run_cli

    ckpt = tmp_path / "lipsync_expert.pth"
    wav2lip_checkpoint(ckpt)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    run_cli(["import-expert", str(ckpt)], cwd=tmp_path, check=True)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert params["sync_expert"]["pretrained"] == str(ckpt) and params["preprocess"]["img_size"] == 96
    proc = run_cli(["import-expert", str(tmp_path / "missing.pth")], cwd=tmp_path)
    assert proc.returncode == 1 and "does not exist" in proc.stderr


def test_losses_and_gradients():
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.rand(8, 16), dim=1).requires_grad_()
    v = torch.nn.functional.normalize(torch.rand(8, 16), dim=1).requires_grad_()
    y = torch.tensor([1, 0] * 4, dtype=torch.float32)
    loss = sync_bce(a, v, y) + in_batch_contrastive(a, v, y)
    loss.backward()
    assert torch.isfinite(loss) and a.grad.abs().sum() > 0 and v.grad.abs().sum() > 0
    # matched pairs score lower contrastive loss than shuffled ones
    e = torch.nn.functional.normalize(torch.rand(8, 16), dim=1)
    assert in_batch_contrastive(e, e, torch.ones(8)) < in_batch_contrastive(e, e.roll(1, 0), torch.ones(8))
