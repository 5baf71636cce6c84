"""The sync-expert training stage: exact resume, DDP with gloo, preemption, and sync_check."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers import REPO, default_params, run_cli, tiny_expert

from pipeline.train import loop, sync_expert


def tiny_view(work, **changes):
    p = default_params()
    p["data"]["dataset"] = "lrw"
    cfg = p["sync_expert"]
    cfg.update(tiny_expert(**{**dict(max_steps=6, eval_every=3, log_every=1), **changes}))
    return {"data": {"dataset": "lrw"}, "preprocess": {"img_size": 96}, "sync_expert": cfg}


@pytest.fixture
def in_project(processed, monkeypatch):
    work, _ = processed
    monkeypatch.chdir(work)
    return work


def final_weights(work_dir):
    return loop.load_checkpoint(work_dir / "checkpoint.pt")["model"]


def test_resume_is_exact(in_project, tmp_path):
    straight, resumed = tmp_path / "a", tmp_path / "b"
    straight.mkdir(), resumed.mkdir()
    sync_expert.train_worker(0, 1, tiny_view(in_project, max_steps=6), str(straight), None)
    sync_expert.train_worker(0, 1, tiny_view(in_project, max_steps=3), str(resumed), None)
    assert loop.load_checkpoint(resumed / "checkpoint.pt")["step"] == 3
    sync_expert.train_worker(0, 1, tiny_view(in_project, max_steps=6), str(resumed), None)
    a, b = final_weights(straight), final_weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ha = loop.load_checkpoint(straight / "checkpoint.pt")["history"]
    hb = loop.load_checkpoint(resumed / "checkpoint.pt")["history"]
    assert [r["train_loss"] for r in ha] == [r["train_loss"] for r in hb]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path")
def test_cpu_autocast_is_bf16_only_where_the_cpu_has_bf16_instructions(monkeypatch):
    assert not loop.cpu_native_bf16("flags\t\t: fpu sse avx2 avx512f avx512bw avx512_vnni\n")
    onednn_bf16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert loop.cpu_native_bf16("flags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n") == onednn_bf16
    assert loop.cpu_native_bf16("flags\t\t: fpu amx_bf16 amx_tile\n") == onednn_bf16
    monkeypatch.setattr(loop, "cpu_native_bf16", lambda *a: False)
    fp32 = loop.setup(amp=True)
    assert fp32.precision == "fp32" and fp32.amp_dtype is None
    monkeypatch.setattr(loop, "cpu_native_bf16", lambda *a: True)
    assert loop.setup(amp=False).precision == "fp32"
    rt = loop.setup(amp=True)
    assert rt.precision == "bf16" and rt.scaler is None
    conv = torch.nn.Conv2d(3, 4, 3)
    with loop.autocast(rt):
        out = conv(torch.rand(2, 3, 8, 8))
    assert out.dtype == torch.bfloat16 and conv.weight.dtype == torch.float32  # weights and updates stay fp32


def test_ddp_two_gloo_processes(in_project, tmp_path):
    work = tmp_path / "ddp"
    work.mkdir()
    loop.run_workers(sync_expert.train_worker, 2, tiny_view(in_project, max_steps=4, processes=2), str(work), None)
    state = loop.load_checkpoint(work / "checkpoint.pt")
    assert state["step"] == 4 and (work / "best.pt").is_file() and (work / "last.pt").is_file()
    assert json.loads((work / "done.json").read_text())["step"] == 4


@pytest.mark.parametrize("processes", [1, 2])
def test_stage_writes_model_metrics_plot_and_survives_sigterm(processed, tmp_path, processes):
    work, params = processed
    proj = tmp_path / "proj"
    proj.mkdir()
    os.symlink(work / "data", proj / "data")
    p = dict(params)
    p["sync_expert"] = tiny_view(proj, max_steps=60, eval_every=20, processes=processes)["sync_expert"]
    (proj / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "train_sync_expert"],
        cwd=proj,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not list(proj.glob("work/train_sync_expert/*/checkpoint.pt")):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "checkpoint saved, re-run to continue" in err
    ckpt = next(proj.glob("work/train_sync_expert/*/checkpoint.pt"))
    stopped_at = loop.load_checkpoint(ckpt)["step"]
    assert 20 <= stopped_at < 60
    run_cli(["train_sync_expert", "--log", "re.log"], cwd=proj, check=True)
    assert "resuming train_sync_expert from" in (proj / "re.log").read_text()
    metrics = json.loads((proj / "metrics/train_sync_expert.json").read_text())
    assert metrics["steps"] == 60 and 0 <= metrics["val_acc"] <= 1
    for split in ("val", "test"):  # which way it errs (the accuracy mixes the two), and how well it ranks
        hit, fa = metrics[f"{split}_acc_in_sync"], metrics[f"{split}_acc_off_sync"]
        assert min(hit, fa) - 1e-6 <= metrics[f"{split}_acc"] <= max(hit, fa) + 1e-6
        assert 0 <= metrics[f"{split}_auc"] <= 1
    plot = pd.read_csv(proj / "plots/train_sync_expert.csv")
    assert (
        list(plot.step) == list(range(1, 61)) and plot.val_loss.notna().sum() == 3 and plot.val_auc.notna().sum() == 3
    )
    assert (proj / "models/sync_expert/expert.pt").is_file() and (proj / "models/sync_expert/last.pt").is_file()
    assert not list(proj.glob("work/train_sync_expert/*"))


def test_sync_check_finds_a_delayed_clip(expert_project):
    """The expert learns the train clips; a copy of one with its audio delayed by 5 frames (in
    the test split) is found at offset +5 and excluded, the original at 0 and kept."""
    proj, _ = expert_project
    table = pd.read_parquet(proj / "data/sync_check/lrw/offsets.parquet").set_index("clip_id")
    delayed = table[[c.endswith("_00950") for c in table.index]].iloc[0]
    word = delayed.name.split("/")[0]
    original = table.loc[f"{word}/train/{word}_00001"]
    assert original.offset == 0 and not original.excluded
    assert delayed.offset == 5 and delayed.excluded and "max_offset" in delayed.reason
    assert delayed.confidence > 0
    metrics = json.loads((proj / "metrics/sync_check.json").read_text())
    assert metrics["clips"] == len(table) and metrics["excluded"] >= 1
    assert (proj / "data/sync_check/lrw/offsets_hist.png").stat().st_size > 10_000


def test_roc_auc_counts_ties_half():
    assert sync_expert.roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True])) == 0.75
    assert sync_expert.roc_auc(np.array([0.5, 0.5]), np.array([True, False])) == 0.5
    assert sync_expert.roc_auc(np.array([0.9, 0.1]), np.array([True, False])) == 1.0
    assert np.isnan(sync_expert.roc_auc(np.array([0.9, 0.1]), np.array([True, True])))


def test_test_figures_pool_several_pairings_of_the_windows(in_project):
    from pipeline.data.datasets import SyncDataset
    from pipeline.io.store import Store
    from pipeline.models.syncnet import SyncNet

    store = Store(in_project / "data/processed/lrw")
    torch.manual_seed(0)
    model = SyncNet(96, 0.0625)
    rt = loop.setup(amp=False, rank=0, world_size=1)
    a, b = (SyncDataset(store, ("val",), seed=s, other_clip=0.25) for s in (1, 1001))
    n = min(24, len(a))
    one, other = sync_expert.evaluate(model, a, n, rt), sync_expert.evaluate(model, b, n, rt)
    pooled = sync_expert.evaluate(model, [a, b], n, rt)
    # the pooled figures are the mean of the two pairings (same number of pairs in each)
    for key in ("val_acc", "val_loss"):
        assert pooled[key] == pytest.approx((one[key] + other[key]) / 2, abs=1e-5)
    assert sync_expert.evaluate(model, [a], n, rt)["val_acc"] == one["val_acc"]
