"""A stage's numbers do not depend on the thread variables its orchestrator exported.

Snakemake sets OMP_NUM_THREADS and MKL_NUM_THREADS to a rule's threads, DVC sets nothing, SLURM
may set other counts: every `python -m pipeline` process pins every numeric library to the cores
it may use before numpy or torch loads (runtime.pin_threads), and a resumed training keeps the
thread count its checkpoint records. "The same bytes" covers one machine: another CPU sums in
another order (and bf16 where this one computes fp32).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from helpers import REPO, clone_run, tool_env, venv_bin

PROBE = """
import json, os
from pipeline.runtime import pin_threads
n = pin_threads()
import numpy, torch
from threadpoolctl import threadpool_info
print(json.dumps({"n": n, "torch": torch.get_num_threads(),
                  "pools": {i["internal_api"]: i["num_threads"] for i in threadpool_info()},
                  "env": {v: os.environ[v] for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}))
"""


def probe(env: dict) -> dict:
    full = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS") and not k.startswith("SLURM_")}
    full.update(env, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", PROBE], env=full, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_every_library_starts_with_the_pinned_count_whatever_the_parent_exported():
    from pipeline.runtime import available_cores

    cores = available_cores()
    seen = [
        probe(env)
        for env in (
            {},
            {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
            {"OMP_NUM_THREADS": str(cores + 3), "OPENBLAS_NUM_THREADS": "1"},
        )
    ]
    for s in seen:
        assert s["n"] == cores and s["torch"] == cores, s
        assert set(s["env"].values()) == {str(cores)}, s
        assert s["pools"] and set(s["pools"].values()) == {cores}, s  # OpenMP, BLAS: all of them
    # a SLURM allocation is the count (the job's cores, not the node's)
    assert probe({"SLURM_CPUS_PER_TASK": "1", "OMP_NUM_THREADS": "2"})["torch"] == 1


def train(root, *, env: dict | None = None, prefix: tuple = (), check: bool = True) -> subprocess.CompletedProcess:
    cmd = [
        *prefix,
        str(venv_bin() / "python"),
        "-m",
        "pipeline",
        "train_generator",
        "--variant",
        "no_memory",
        "--log",
        "logs/train_generator-no_memory.log",
    ]
    full = {k: v for k, v in tool_env(root).items() if not k.endswith("_NUM_THREADS")}
    proc = subprocess.run(cmd, cwd=root, env={**full, **(env or {})}, capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def outputs(root) -> tuple[bytes, dict]:
    return (
        (root / "models/generator/no_memory/generator.pt").read_bytes(),
        json.loads((root / "metrics/train_generator_no_memory.json").read_text()),
    )


@pytest.mark.slow
def test_a_stage_writes_the_same_bytes_whatever_omp_num_threads_says(tiny_run, tmp_path):
    root = clone_run(tiny_run, tmp_path / "repo")
    results = {}
    for value in (None, "1", "2", "3"):
        train(root, env={"OMP_NUM_THREADS": value, "MKL_NUM_THREADS": value} if value else None)
        results[value] = outputs(root)
    weights, metrics = results[None]
    for value, (w, m) in results.items():
        assert m == metrics, value
        assert w == weights, value  # the checkpoint, byte for byte


def has_taskset() -> bool:
    return subprocess.run(["sh", "-c", "command -v taskset"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 or not has_taskset(), reason="needs 2 CPUs and taskset")
def test_a_resume_on_fewer_cores_continues_with_the_threads_the_run_started_with(tiny_run, tmp_path):
    params = yaml.safe_load((tiny_run / "params.yaml").read_text())
    params["generator"].update(max_steps=16, checkpoint_every=1, eval_every=8)
    one_go = clone_run(tiny_run, tmp_path / "one_go")
    (one_go / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    train(one_go, prefix=("taskset", "-c", "0,1"))
    expected = outputs(one_go)

    root = clone_run(tiny_run, tmp_path / "repo")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cmd = [
        "taskset",
        "-c",
        "0,1",
        str(venv_bin() / "python"),
        "-m",
        "pipeline",
        "train_generator",
        "--variant",
        "no_memory",
        "--log",
        "logs/train_generator-no_memory.log",
    ]
    proc = subprocess.Popen(
        cmd, cwd=root, env=tool_env(root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 120
    while not list(root.glob("work/train_generator/*/checkpoint.pt")):
        assert time.time() < deadline and proc.poll() is None, "no checkpoint while the stage ran"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    ckpt = next(root.glob("work/train_generator/*/checkpoint.pt"))
    saved = torch.load(ckpt, weights_only=False)
    assert saved["numerics"]["threads"] == 2 and 1 <= saved["step"] < 16, saved["numerics"]

    # requeued on an allocation of one CPU, with an orchestrator's OMP_NUM_THREADS of 1
    train(root, env={"OMP_NUM_THREADS": "1"}, prefix=("taskset", "-c", "0"))
    log = (root / "logs/train_generator-no_memory.log").read_text()
    assert f"at step {saved['step']}" in log, log[-2000:]
    got = outputs(root)
    assert got[0] == expected[0]  # the weights, byte for byte
    assert got[1] == expected[1]
    assert "continuing with 2 thread(s) per process, as the checkpoint's run (this process has 1)" in log


def test_a_resume_that_cannot_compute_the_same_says_so(caplog):
    from pipeline.train import loop

    rt = loop.Runtime(torch.device("cpu"), threads=2)
    with caplog.at_level("WARNING", logger="pipeline"):
        loop.check_resume(rt, {**loop.numerics(rt)}, "x")
        assert not caplog.records
        loop.check_resume(rt, {**loop.numerics(rt), "precision": "bf16", "threads": 4}, "train_generator (memory)")
    text = caplog.records[-1].getMessage()
    assert "precision bf16 -> fp32" in text and "threads 4 -> 2" in text and "not be byte-identical" in text


def _fails(rank, world):
    from pipeline.errors import PipelineError

    raise PipelineError("train_generator (memory): the loss is not finite at step 3")


def test_a_clear_error_in_a_worker_started_with_other_threads_stays_clear():
    from pipeline.errors import PipelineError
    from pipeline.runtime import threads
    from pipeline.train import loop

    before = os.environ.get(loop.RANK_THREADS_VAR)
    with pytest.raises(PipelineError, match="not finite at step 3"):
        loop.run_workers(_fails, 1, threads=threads() + 1)  # a fresh process: its libraries start with that count
    assert os.environ.get(loop.RANK_THREADS_VAR) == before
