"""The cluster path on a real single-node SLURM (docs/design.md §10): the whole graph through the SLURM
profile and Snakemake's executor plugin, preemption (SIGUSR1, checkpoint, requeue, resume), DDP
across SLURM tasks, and a failing shard job. Never a mock: munged, slurmctld and slurmd run for
the session (tests/slurm_cluster.py). In CI these tests must run; elsewhere they are skipped
when SLURM is not installed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import clone_run, copy_repo, git_env, run_tool, set_params, tiny_params, tool_env, venv_bin
from slurm_cluster import Cluster, missing_tools

pytestmark = pytest.mark.slow

# the SLURM profile as a user runs it, with the test node's 2 CPUs per multi-core job and quick
# status polling (a real cluster is polled every 10 s and first checked after 40 s)
FAST = [
    "--cores",
    "2",
    "--seconds-between-status-checks",
    "1",
    "--slurm-init-seconds-before-status-checks",
    "1",
    "--slurm-keep-successful-logs",
    "--latency-wait",
    "5",
]
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = missing_tools()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(
                f"CI must run the SLURM tests, but {', '.join(missing)} is missing "
                "(.ci/run installs Debian's slurm-wlm and munge)"
            )
        pytest.skip(f"SLURM is not installed here ({', '.join(missing)} missing): apt-get install slurm-wlm munge")
    c = Cluster(tmp_path_factory.mktemp("slurm")).start()
    yield c
    c.stop()


def snakemake_slurm(root: Path, c: Cluster, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_tool(["snakemake", "--profile", "workflow/profiles/slurm", *FAST, *extra], root, check=check, env=c.env)


def submitted(text: str) -> list[tuple[str, str]]:
    return SUBMITTED.findall(text)


def test_whole_graph_through_the_slurm_profile(cluster, tiny_run, tmp_path):
    root = copy_repo(tmp_path / "repo")
    set_params(root, tiny_params())
    subprocess.run(["git", "commit", "-qam", "tiny"], cwd=root, env=git_env(), check=True)
    started = time.time()
    proc = snakemake_slurm(root, cluster)
    seconds = time.time() - started
    out = proc.stdout + proc.stderr
    jobs = submitted(out)
    rules = [
        "acquire",
        "index",
        "preprocess",
        "preprocess",
        "gather",
        "train_sync_expert",
        "sync_check",
        "train_generator",
        "train_generator",
        "evaluate",
        "demo",
        "report",
    ]
    assert len(jobs) == len(rules), out[-3000:]
    assert len({j for j, _ in jobs}) == len(jobs)  # one sbatch submission per job
    assert sorted(Path(log).relative_to(root / ".snakemake/slurm_logs").parts[0] for _, log in jobs) == sorted(
        f"rule_{r}" for r in rules
    )
    for _job_id, log in jobs:  # the job ran on the cluster, and the stage's log says which job it was
        assert Path(log).is_file(), log
    stage_logs = "".join(p.read_text() for p in (root / "logs").glob("*.log"))
    for job_id, _ in jobs:
        assert f"SLURM job {job_id} (restart 0" in stage_logs, job_id

    # the same outputs as the local Snakemake run of the same params (seeded CPU training)
    for table in ("data/manifests/embedded.parquet", "data/processed/embedded/index.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(root / table), pd.read_parquet(tiny_run / table))
    for name in ("train_sync_expert", "sync_check", "train_generator_memory", "train_generator_no_memory", "evaluate"):
        ours = json.loads((root / f"metrics/{name}.json").read_text())
        local = json.loads((tiny_run / f"metrics/{name}.json").read_text())
        assert ours | {"train_seconds": 0} == local | {"train_seconds": 0}, name
    local_seconds = float((tiny_run / ".run_seconds").read_text())
    print(
        f"\nwhole tiny graph: SLURM {seconds:.0f} s, local {local_seconds:.0f} s "
        f"(x{seconds / local_seconds:.2f}), {len(jobs)} sbatch jobs"
    )

    again = snakemake_slurm(root, cluster)
    assert "Nothing to be done" in again.stdout + again.stderr and not submitted(again.stdout + again.stderr)


def running_job(c: Cluster, timeout: float = 120) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        ids = c.run("squeue", "-h", "-t", "RUNNING", "-o", "%i").stdout.split()
        if ids:
            return ids[0]
        time.sleep(0.2)
    raise AssertionError("no SLURM job started")


def test_preempted_training_checkpoints_requeues_and_ends_as_an_uninterrupted_run(cluster, tiny_run, tmp_path):
    root = clone_run(tiny_run, tmp_path / "repo")
    params = tiny_params()
    params["generator"].update(variants=["memory"], max_steps=40, checkpoint_every=2, eval_every=20)
    set_params(root, params)
    exe = [str(venv_bin() / "snakemake"), "--profile", "workflow/profiles/slurm", *FAST, "--until", "train_generator"]
    smk = subprocess.Popen(
        exe,
        cwd=root,
        env={**tool_env(root), **cluster.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        job = running_job(cluster)
        deadline = time.time() + 180
        while not list(root.glob("work/train_generator/*/checkpoint.pt")):
            assert time.time() < deadline and smk.poll() is None, "no checkpoint while the job ran"
            time.sleep(0.1)
        # what SLURM does 300 s before the time limit with the profile's --signal=USR1@300
        cluster.run("scancel", "--signal=USR1", job)
        deadline = time.time() + 120
        while not re.search(
            r"JobState=PENDING Reason=BeginTime.*Restarts=1", cluster.run("scontrol", "show", "job", job).stdout, re.S
        ):
            assert time.time() < deadline and smk.poll() is None, "the job was not requeued"
            time.sleep(0.2)
        # SLURM holds a requeued job for 120 s before it may start again; the test shortens the hold
        cluster.run("scontrol", "update", f"jobid={job}", "StartTime=now")
        out, _ = smk.communicate(timeout=300)
    finally:
        if smk.poll() is None:
            smk.kill()
    assert smk.returncode == 0, out[-3000:]
    assert [j for j, _ in submitted(out)] == [job]  # the same job continued: Snakemake submitted once
    # Snakemake clears a job's log before it runs it, so the log is the second start's
    log = (root / "logs/train_generator-memory.log").read_text()
    assert f"SLURM job {job} (restart 1" in log
    resumed = re.findall(r"resuming train_generator \(memory\) from \S+ at step (\d+)", log)
    assert resumed and 2 <= int(resumed[0]) < 40, log[-2000:]
    assert json.loads((root / "metrics/train_generator_memory.json").read_text())["steps"] == 40

    # the same params run in one go, locally: the same weights
    other = clone_run(tiny_run, tmp_path / "other")
    set_params(other, params)
    run_tool(
        [
            "python",
            "-m",
            "pipeline",
            "train_generator",
            "--variant",
            "memory",
            "--params",
            "params.yaml",
            "--log",
            "logs/train_generator-memory.log",
        ],
        other,
    )
    a = torch.load(root / "models/generator/memory/generator.pt", weights_only=False)
    b = torch.load(other / "models/generator/memory/generator.pt", weights_only=False)
    sa, sb = a.get("state_dict", a), b.get("state_dict", b)
    assert sa.keys() == sb.keys()
    for k in sa:
        if isinstance(sa[k], torch.Tensor):
            assert torch.equal(sa[k], sb[k]), k


def test_ddp_across_two_slurm_tasks(cluster, tiny_run, tmp_path):
    root = clone_run(tiny_run, tmp_path / "repo")
    params = tiny_params()
    params["generator"].update(variants=["memory"], max_steps=4)
    set_params(root, params)
    store = tmp_path / "mlflow.db"
    env = {**tool_env(root), **cluster.env, "MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
    python = venv_bin() / "python"
    out = tmp_path / "job.out"
    proc = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--wait",
            "--ntasks=2",
            "--cpus-per-task=1",
            "-o",
            str(out),
            "-D",
            str(root),
            "--wrap",
            f"srun {python} -m pipeline train_generator --variant memory --params params.yaml "
            "--log logs/train_generator-memory.log",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    text = out.read_text() if out.exists() else ""
    assert proc.returncode == 0, f"{proc.stderr}\n{text[-3000:]}"
    log = (root / "logs/train_generator-memory.log").read_text()
    assert "memory: rank 0 of 2 DDP process(es)" in log and "memory: rank 1 of 2 DDP process(es)" in log
    assert json.loads((root / "metrics/train_generator_memory.json").read_text())["steps"] == 4
    assert (root / "models/generator/memory/generator.pt").is_file()
    assert not list(root.glob("models/generator/memory/.*tmp*"))
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1 and runs[0].info.run_name.startswith("train_generator-memory")  # rank 0 alone tracks


def test_a_failing_shard_job_is_reported_and_only_it_reruns(cluster, tiny_run, tmp_path):
    root = clone_run(tiny_run, tmp_path / "repo")
    params = tiny_params()
    params["preprocess"]["max_reject_fraction"] = 0.0
    set_params(root, params)
    from pipeline.preprocess.run import shard_of

    manifest = pd.read_parquet(root / "data/manifests/embedded.parquet")
    clip = next(r for r in manifest.to_dict("records") if shard_of(r["clip_id"], 2) == 1)
    path = root / clip["video_path"]
    good, stat = path.read_bytes(), path.stat()
    path.write_bytes(good[: len(good) // 3])  # truncated in place: index already accepted it
    proc = snakemake_slurm(root, cluster, "--until", "preprocess", "--retries", "0", "--keep-going", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    failed_log = re.search(r"log: .*?(\S*slurm_logs/rule_preprocess/1/\d+\.log)", out)
    assert "Error in rule preprocess" in out and failed_log, out[-4000:]
    assert "reject" in Path(failed_log.group(1)).read_text()
    assert (root / "data/processed/embedded/shards/shard-0/meta.json").is_file()

    path.write_bytes(good)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    shard0 = (root / "data/processed/embedded/shards/shard-0/meta.json").stat().st_mtime_ns
    again = snakemake_slurm(root, cluster, "--until", "preprocess")
    jobs = submitted(again.stdout + again.stderr)
    assert [Path(log).relative_to(root / ".snakemake/slurm_logs").parts[:2] for _, log in jobs] == [
        ("rule_preprocess", "1")
    ]
    assert "1 rejected before tried again" in (root / "logs/preprocess-1.log").read_text()
    assert (root / "data/processed/embedded/shards/shard-0/meta.json").stat().st_mtime_ns == shard0
