"""benchmarks/gpu_check.py: its CPU path at the tiny size runs every case a GPU would run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path")
def test_gpu_check_runs_its_cpu_path_and_says_so(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/gpu_check.py"), "--steps", "1", "--json", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("no GPU on this machine: the CPU path at the tiny size")
    assert lines[-1].startswith("gpu_check: 6 of 6 cases passed on the CPU")
    results = json.loads(out.read_text())["results"]
    for case in ("expert fp32", "expert bf16", "generator fp32", "generator bf16", "ddp 1 process"):
        assert results[case]["samples_per_s"] > 0 and results[case]["peak_mib"] > 0, case
    assert "skipped" in results["generator bf16 compile"]
    assert results["ddp 1 process"]["backend"] == "gloo"
    assert results["resume"]["exact"] and results["resume"]["max_diff"] == 0.0


def test_weights_that_differ_are_told_apart(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    a = {"g": {"w": torch.ones(3)}, "d": {"w": torch.zeros(2)}}
    b = {"g": {"w": torch.tensor([1.0, 1.0, 1.0 + 2**-20])}, "d": {"w": torch.zeros(2)}}
    torch.save(a, tmp_path / "a.pt")
    torch.save(b, tmp_path / "b.pt")
    assert gpu_check._equal(tmp_path / "a.pt", tmp_path / "a.pt") == (True, 0.0)
    same, diff = gpu_check._equal(tmp_path / "a.pt", tmp_path / "b.pt")
    assert not same and diff == pytest.approx(2**-20)
