"""Trained models given instead of trained: sync_expert.pretrained (a project expert too) and
generator.pretrained, checked before they are used."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.models.syncnet import SyncNet
from pipeline.nets.expert import load_expert, package_expert
from pipeline.nets.generate import load_generator, package_generator
from pipeline.train import gen_step
from pipeline.train.generator import adopt_pretrained
from pipeline.train.sync_expert import import_pretrained


def test_a_project_expert_is_adopted_as_it_is(tmp_path):
    torch.manual_seed(0)
    model = SyncNet(96, 0.25)
    torch.save(package_expert(model, 120, {"val_acc": 0.9}), tmp_path / "expert.pt")
    out = tmp_path / "models/sync_expert"
    assert import_pretrained(tmp_path / "expert.pt", out, 96)["imported"] == 1
    adopted = load_expert(out / "expert.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(adopted.state_dict()[k], v), k
    assert torch.load(out / "expert.pt", weights_only=False)["source"] == "trained"  # as the file says
    with pytest.raises(PipelineError, match="works on 96 px crops, but preprocess.img_size is 128"):
        import_pretrained(tmp_path / "expert.pt", out, 128)
    with pytest.raises(PipelineError, match="does not exist"):
        import_pretrained(tmp_path / "absent.pt", out, 96)


def view(size: int = 96) -> dict:
    from helpers import default_params

    p = default_params()
    return {"data": {"dataset": "embedded"}, "preprocess": {"img_size": size}, "generator": p["generator"]}


def saved_generator(path, variant: str, size: int = 96):
    g, _ = gen_step.build(view(size), variant, SyncNet(size, 0.25))
    torch.save(package_generator(g, 300, {"val_l1": 0.03}, {"variant": variant, "dataset": "lrw"}), path)
    return path


def test_a_given_generator_is_checked_and_copied(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    memory = saved_generator(tmp_path / "memory.pt", "memory")
    metrics = adopt_pretrained(view(), "memory", memory, None)
    assert metrics["pretrained"] == str(memory) and metrics["steps"] == 300 and metrics["val_l1"] == 0.03
    assert (tmp_path / "models/generator/memory/generator.pt").read_bytes() == memory.read_bytes()
    load_generator(tmp_path / "models/generator/memory/generator.pt")
    assert json.loads((tmp_path / "metrics/train_generator_memory.json").read_text()) == metrics
    assert (tmp_path / "plots/train_generator_memory.csv").read_text().count("\n") == 1  # a header, no curve
    with pytest.raises(PipelineError, match="holds the 'memory' variant, not 'no_memory'"):
        adopt_pretrained(view(), "no_memory", memory, None)
    with pytest.raises(PipelineError, match="works on 96 px crops, but preprocess.img_size is 128"):
        adopt_pretrained(view(128), "memory", memory, None)
    with pytest.raises(PipelineError, match="does not exist"):
        adopt_pretrained(view(), "memory", tmp_path / "absent.pt", None)
    torch.save(package_expert(SyncNet(96, 0.25), 1, {}), tmp_path / "expert.pt")
    with pytest.raises(PipelineError, match="generator.pretrained.memory: not a generator checkpoint"):
        adopt_pretrained(view(), "memory", tmp_path / "expert.pt", None)
