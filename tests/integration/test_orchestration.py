"""docs/design.md §3: Snakemake and DVC run the same graph from params.yaml, and both cache.

The one-truth test reads the Snakemake DAG (through its API) and dvc.yaml's resolved stages and
compares, stage by stage, the command, the data and code inputs, the params and the outputs.
The caching tests run both tools for real in temporary copies of the repository.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import REPO, clone_run, copy_repo, git_env, set_params, tiny_params, tool_env, venv_bin
from helpers import run_tool as run


def snakemake_jobs(root: Path) -> dict[str, dict]:
    """Every job of the Snakemake DAG (forceall): command, inputs, params, outputs."""
    script = r"""
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi, OutputSettings, ResourceSettings, DAGSettings
with SnakemakeApi(OutputSettings()) as api:
    wf = api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=Path("Snakefile"), workdir=Path("."))
    dag_api = wf.dag(DAGSettings(forceall=True))
    w = dag_api.workflow_api._workflow
    w._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True, nolock=True)
    w._build_dag()
    out = {}
    for job in w.dag.jobs:
        if job.rule.name == "all":
            continue
        name = job.rule.name + ("@" + "-".join(job.wildcards) if len(job.wildcards) else "")
        out[name] = {"cmd": job.shellcmd, "inputs": sorted(map(str, job.input)),
                              "params": sorted(k.replace("__", ".") for k in job.params.keys()),
                              "outputs": sorted(map(str, job.output)), "log": list(map(str, job.log))}
    print("JOBS=" + json.dumps(out))
"""
    proc = run(["python", "-c", script], root)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("JOBS=")][-1]
    import json

    return json.loads(line[5:])


def dvc_stages(root: Path) -> dict[str, dict]:
    script = r"""
import json
from dvc.repo import Repo
from dvc.dependency.param import ParamsDependency
out = {}
for st in Repo(".").index.stages:
    params = [p for d in st.deps if isinstance(d, ParamsDependency) for p in d.params]
    out[st.name] = {"cmd": st.cmd, "inputs": sorted(d.def_path for d in st.deps if not isinstance(d, ParamsDependency)),
                    "params": sorted(params), "outputs": sorted(o.def_path for o in st.outs),
                    "params_files": sorted({d.def_path for d in st.deps if isinstance(d, ParamsDependency)})}
print("STAGES=" + json.dumps(out))
"""
    proc = run(["python", "-c", script], root)
    import json

    return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("STAGES=")][-1][7:])


@pytest.fixture
def repo_copy(tmp_path):
    return copy_repo(tmp_path / "repo")


@pytest.mark.parametrize("dataset", ["embedded", "lrw"])
def test_snakemake_and_dvc_run_the_same_graph(repo_copy, dataset):
    if dataset != "embedded":
        params = tiny_params()
        params["data"]["dataset"] = dataset
        params["data"][dataset]["root"] = "/datasets/somewhere"
        set_params(repo_copy, params)
    smk, dvc = snakemake_jobs(repo_copy), dvc_stages(repo_copy)
    assert set(smk) == set(dvc), "stages differ"
    ds = dataset
    for name in smk:
        s, d = smk[name], dvc[name]
        assert s["cmd"] == d["cmd"], name
        smk_inputs = s["inputs"]
        # the planned differences: where DVC depends on a folder as a whole (its templating cannot
        # expand a list into deps), Snakemake lists every file or folder in it one by one
        p = yaml.safe_load((repo_copy / "params.yaml").read_text())
        folders = {
            f"data/processed/{ds}/shards": [f"data/processed/{ds}/shards/shard-{k}" for k in p["preprocess"]["shards"]],
            "models/generator": [f"models/generator/{v}" for v in p["generator"]["variants"]],
            "plots": ["plots/train_sync_expert.csv"]
            + [f"plots/train_generator_{v}.csv" for v in p["generator"]["variants"]],
        }
        for folder, members in folders.items():
            if folder in d["inputs"]:
                assert sorted(i for i in smk_inputs if i.startswith(folder + "/")) == sorted(members), (name, folder)
                smk_inputs = sorted([i for i in smk_inputs if not i.startswith(folder + "/")] + [folder])
        assert smk_inputs == d["inputs"], name
        assert s["params"] == d["params"], name
        assert d["params_files"] == ["params.yaml"], name
        assert s["outputs"] == d["outputs"], name
        assert s["log"] == [f"logs/{name.replace('@', '-')}.log"] and f"--log {s['log'][0]}" in s["cmd"], name
    # the registry that drives both: every stage's code is in its inputs
    from pipeline.stages import STAGES

    for name, spec in STAGES.items():
        jobs = [v for k, v in smk.items() if k.split("@")[0] == name]
        assert jobs, name
        for job in jobs:
            assert set(spec.all_code) <= set(job["inputs"]), name
    if dataset == "lrw":
        assert smk["index"]["outputs"][0].startswith("data/manifests/lrw")


# modules every stage uses to read params, name paths and log; they are not per-stage code
PLUMBING = {
    "pipeline/__init__.py",
    "pipeline/cli.py",
    "pipeline/config.py",
    "pipeline/errors.py",
    "pipeline/paths.py",
    "pipeline/runtime.py",
    "pipeline/stages.py",
    "pipeline/tracking.py",
    "pipeline/mp_solutions.py",
}


def _pipeline_imports(root: Path, path: Path) -> set[Path]:
    """Files of the pipeline package that `path` imports, at the top or inside a function."""
    import ast

    def module_file(dotted: str) -> Path | None:
        for cand in (root / (dotted.replace(".", "/") + ".py"), root / dotted.replace(".", "/") / "__init__.py"):
            if cand.is_file():
                return cand
        return None

    package = list(path.relative_to(root).parent.parts)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            parts = package[: len(package) - node.level + 1] if node.level else []
            dotted = ".".join(parts + ([node.module] if node.module else []))
            # `from pkg import module` names a module; `from module import name` the module itself
            files = [module_file(f"{dotted}.{a.name}") or module_file(dotted) for a in node.names]
        elif isinstance(node, ast.Import):
            files = [module_file(a.name) for a in node.names]
        else:
            continue
        found.update(f for f in files if f is not None and f.is_relative_to(root / "pipeline"))
    return found


def test_every_stage_declares_the_code_it_runs():
    """A change to any module a stage's command imports (transitively) re-runs that stage: the
    module is in the stage's code list, which both orchestrators take as inputs."""
    from pipeline.stages import STAGES

    root = REPO
    for name, spec in STAGES.items():
        seen, todo = set(), [root / spec.code[0]]
        while todo:
            f = todo.pop()
            if f not in seen:
                seen.add(f)
                todo.extend(_pipeline_imports(root, f))
        used = {str(f.relative_to(root)) for f in seen if f.name != "__init__.py"} - PLUMBING
        missing = sorted(used - set(spec.code))
        assert not missing, f"stage {name} runs {missing} but does not list it in pipeline/stages.py (and dvc.yaml)"


def test_the_registry_declares_the_data_inputs_dvc_yaml_lists():
    """The runner fingerprints the data inputs the registry declares; dvc.yaml depends on the same
    ones (and the one-truth test holds Snakemake to dvc.yaml): inputs are declared once."""
    from pipeline.stages import STAGES

    root = REPO
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    assert set(stages) == set(STAGES)
    for name, spec in STAGES.items():
        stage = stages[name].get("do", stages[name])
        data = [d.replace("${data.dataset}", "{dataset}") for d in stage["deps"] if not d.startswith("pipeline/")]
        assert data == list(spec.inputs), f"stage {name}: dvc.yaml's data deps differ from pipeline/stages.py"
        assert spec.module.replace(".", "/") + ".py" == spec.code[0], f"stage {name}: code[0] is not its module"


def test_every_rule_has_log_benchmark_threads():
    text = "\n".join(p.read_text() for p in (REPO / "workflow/rules").glob("*.smk"))
    rules = re.split(r"^rule ", text, flags=re.M)[1:]
    assert rules
    for body in rules:
        name = body.split(":")[0]
        for key in ("log:", "benchmark:", "threads:", "params:", "input:", "output:"):
            assert key in body, f"rule {name} has no {key}"


def jobs_planned(root: Path) -> set[str]:
    """Rules a Snakemake dry run would execute (excluding the 'all' target)."""
    proc = run(["snakemake", "--cores", "2", "--dry-run"], root)
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return set()
    table = text.split("Job stats:")[1].split("total")[0]
    names = {line.split()[0] for line in table.splitlines()[3:] if line.strip()}
    return names - {"all"}


ALL_AFTER_PREPROCESS = {"train_sync_expert", "sync_check", "train_generator", "evaluate", "demo", "report"}


def planned_for(root: Path, params: dict, base: dict) -> set[str]:
    """The jobs a change of params.yaml would run; params.yaml is put back afterwards."""
    set_params(root, params)
    try:
        return jobs_planned(root)
    finally:
        set_params(root, base)


@pytest.mark.slow
def test_snakemake_caches_and_reruns_only_what_changed(tiny_run, tmp_path):
    root = clone_run(tiny_run, tmp_path / "repo")
    assert len(pd.read_parquet(root / "data/manifests/embedded.parquet")) == 7
    assert len(pd.read_parquet(root / "data/processed/embedded/index.parquet")) == 7
    second = run(["snakemake", "--cores", "2"], root)
    assert "Nothing to be done" in second.stdout + second.stderr
    base = tiny_params()

    def changed(section, key, value):
        params = tiny_params()
        params[section][key] = value
        return planned_for(root, params, base)

    # a param of each stage: that stage and what depends on it, nothing upstream
    assert changed("preprocess", "smooth_window", 3) == {"preprocess", "gather"} | ALL_AFTER_PREPROCESS
    assert changed("sync_check", "search", 14) == {"sync_check", "train_generator", "evaluate", "demo", "report"}
    assert changed("generator", "gan_warmup", 1) == {"train_generator", "evaluate", "demo", "report"}
    assert changed("index", "min_frames", 10) == {"index", "preprocess", "gather"} | ALL_AFTER_PREPROCESS
    params = tiny_params()
    params["data"]["embedded"]["seed"] = 1
    assert planned_for(root, params, base) == {"acquire", "index", "preprocess", "gather"} | ALL_AFTER_PREPROCESS
    assert jobs_planned(root) == set()  # putting a value back makes the graph up to date again

    # a stage's own source file
    code = root / "pipeline/preprocess/gather.py"
    text, stat = code.read_text(), code.stat()
    code.write_text(text + "\n# edited\n")
    assert jobs_planned(root) == {"gather"} | ALL_AFTER_PREPROCESS
    code.write_text(text)
    os.utime(code, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert jobs_planned(root) == set()

    # a real re-run after a change of the last stages: only those run, upstream files stay untouched
    record_mtime = (root / "data/raw/embedded/source.json").stat().st_mtime_ns
    model_mtime = (root / "models/generator/memory/generator.pt").stat().st_mtime_ns
    params = tiny_params()
    params["evaluate"]["sample_videos"] = 1
    set_params(root, params)
    assert jobs_planned(root) == {"evaluate", "report"}
    out = run(["snakemake", "--cores", "2"], root)
    assert "rule evaluate:" in out.stdout + out.stderr and "rule train_generator:" not in out.stdout + out.stderr
    assert (root / "data/raw/embedded/source.json").stat().st_mtime_ns == record_mtime
    assert (root / "models/generator/memory/generator.pt").stat().st_mtime_ns == model_mtime
    assert jobs_planned(root) == set()

    # DVC agrees with what Snakemake made: after `dvc commit` nothing is out of date, and
    # `dvc repro` of a cheap stage re-creates the same file
    run(["dvc", "commit", "-f", "--no-relink"], root)
    assert dvc_changed(root) == set()
    # ...and recording again after Snakemake re-made files with content the cache already holds
    # leaves Snakemake's timestamps alone (a relinking commit would swap the fresh manifest for
    # a link to the older cached copy, older than its input folder, and Snakemake would re-run
    # everything after index)
    run(["snakemake", "--cores", "2", "--forcerun", "acquire", "--until", "index"], root)
    run(["dvc", "commit", "-f", "--no-relink"], root)
    assert dvc_changed(root) == set() and "index" not in jobs_planned(root)
    run(["snakemake", "--cores", "1", "--touch"], root)  # (the other stages: same content, by DVC's hashes)
    before = (root / "metrics/evaluate.json").read_text()
    out = run(["dvc", "repro", "--force", "--single-item", "evaluate"], root).stdout
    assert "Running stage 'evaluate'" in out
    assert (root / "metrics/evaluate.json").read_text() == before
    assert dvc_changed(root) == set()

    # an override that would bypass params.yaml is refused, with the way to apply it
    proc = run(["snakemake", "--cores", "1", "--dry-run", "--config", "index={'min_frames': 12}"], root, check=False)
    assert proc.returncode != 0
    assert "differs from params.yaml" in proc.stdout + proc.stderr and "preset" in proc.stdout + proc.stderr
    other = root / "other.yaml"
    other.write_text(yaml.safe_dump({"index": {"min_frames": 12}}))
    proc = run(["snakemake", "--cores", "1", "--dry-run", "--configfile", str(other)], root, check=False)
    assert proc.returncode != 0 and "differs from params.yaml" in proc.stdout + proc.stderr

    # an invalid params.yaml is refused by the schema before any job starts
    params["index"]["min_frames"] = "ten"
    set_params(root, params)
    proc = run(["snakemake", "--cores", "1", "--dry-run"], root, check=False)
    assert proc.returncode != 0 and "min_frames" in proc.stdout + proc.stderr


def dvc_changed(root: Path) -> set[str]:
    proc = run(["dvc", "status", "--json"], root)
    return set(json.loads(proc.stdout or "{}"))


@pytest.mark.slow
def test_dvc_caches_and_reruns_only_what_changed(tiny_run, tmp_path):
    root = copy_repo(tmp_path / "repo")
    set_params(root, tiny_params())
    subprocess.run(["git", "commit", "-qam", "tiny"], cwd=root, env=git_env(), check=True)
    run(["dvc", "repro"], root)
    assert (root / "dvc.lock").is_file()
    second = run(["dvc", "repro"], root)
    assert "Data and pipelines are up to date" in second.stdout
    assert dvc_changed(root) == set()

    # the same params through Snakemake (the tiny_run) gave the same data: the tools agree on outputs
    for table in ("data/manifests/embedded.parquet", "data/processed/embedded/index.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(root / table), pd.read_parquet(tiny_run / table))
    for table in (
        "metrics/train_sync_expert.json",
        "metrics/sync_check.json",  # seeded CPU training
        "metrics/train_generator_memory.json",
        "metrics/train_generator_no_memory.json",
        "metrics/evaluate.json",
    ):
        assert json.loads((root / table).read_text()) | {"train_seconds": 0} == json.loads(
            (tiny_run / table).read_text()
        ) | {"train_seconds": 0}, table
    for k in (0, 1):
        meta = f"data/processed/embedded/shards/shard-{k}/meta.json"
        assert (root / meta).read_text() == (tiny_run / meta).read_text()  # same bytes, same checksums
    # every output of the two runs is the same byte for byte (no timing or run id is written into
    # one): under the lock DVC wrote, the Snakemake run's outputs are only not yet in DVC's cache,
    # and `dvc commit` (what `make run` ends with) stores them without changing a line of the lock
    other = clone_run(tiny_run, tmp_path / "snakemake_run")
    shutil.copy2(root / "dvc.lock", other / "dvc.lock")
    status = run(["dvc", "status"], other).stdout
    assert "not in cache" in status and "modified" not in status and "new" not in status, status
    run(["dvc", "commit", "-f", "--no-relink"], other)
    assert (other / "dvc.lock").read_text() == (root / "dvc.lock").read_text()
    assert dvc_changed(other) == set()

    base = tiny_params()
    params = tiny_params()
    params["preprocess"]["smooth_window"] = 3
    set_params(root, params)
    assert dvc_changed(root) == {"preprocess@0", "preprocess@1", "gather"}  # downstream follows once inputs change
    params["data"]["embedded"]["seed"] = 1
    set_params(root, params)
    assert dvc_changed(root) == {"acquire", "preprocess@0", "preprocess@1", "gather"}
    set_params(root, base)
    assert dvc_changed(root) == set()

    code = root / "pipeline/data/manifest.py"
    text = code.read_text()
    code.write_text(text + "\n# edited\n")
    assert dvc_changed(root) == {"index"}
    code.write_text(text)

    # (a real partial re-run is in the Snakemake test; DVC's re-run after a kill in the next test)


def stage_pids(root: Path, stage: str) -> list[int]:
    """Process ids of `python -m pipeline <stage>` commands running in `root`."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if b"pipeline" in cmd and stage.encode() in cmd and Path(cwd) == root.resolve():
            pids.append(int(proc.name))
    return pids


def kill_after_checkpoint(root: Path, popen: subprocess.Popen, timeout: float = 300) -> int:
    """SIGKILL the running train_generator stage once it has written a checkpoint; its step."""
    import signal
    import time

    from pipeline.train import loop

    deadline = time.time() + timeout
    while time.time() < deadline:
        ckpts = list(root.glob("work/train_generator/*/checkpoint.pt"))
        pids = stage_pids(root, "train_generator")
        if ckpts and pids:
            step = loop.load_checkpoint(ckpts[0])["step"]
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            popen.wait(timeout=120)
            return step
        if popen.poll() is not None:
            raise AssertionError(f"finished before it could be killed:\n{popen.stdout.read()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.slow
def test_a_killed_generator_continues_under_snakemake_and_under_dvc(tiny_run, tmp_path):
    repo_copy = clone_run(tiny_run, tmp_path / "repo")
    params = tiny_params()
    params["generator"].update(variants=["memory"], max_steps=24, checkpoint_every=2, eval_every=12)
    set_params(repo_copy, params)
    subprocess.run(["git", "commit", "-qam", "tiny"], cwd=repo_copy, env=git_env(), check=True)
    exe = lambda *cmd: [str(venv_bin() / cmd[0]), *cmd[1:]]
    # (the stages after the generator are left out: they are not what this test is about)
    until = ("--until", "train_generator")
    smk = subprocess.Popen(
        exe("snakemake", "--cores", "2", *until),
        cwd=repo_copy,
        env=tool_env(repo_copy),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    killed_at = kill_after_checkpoint(repo_copy, smk)
    assert smk.returncode != 0 and 2 <= killed_at < 24
    run(["snakemake", "--cores", "2", *until], repo_copy)
    log = (repo_copy / "logs/train_generator-memory.log").read_text()
    assert f"at step {killed_at}" in log.split("resuming train_generator (memory) from")[1]
    metrics = json.loads((repo_copy / "metrics/train_generator_memory.json").read_text())
    assert metrics["steps"] == 24
    assert jobs_planned(repo_copy) == {"evaluate", "demo", "report"}

    # DVC: record what Snakemake made, change the generator's params, kill, re-run
    run(["dvc", "commit", "-f"], repo_copy)
    params["generator"]["lr_g"] = 2e-4
    set_params(repo_copy, params)
    assert dvc_changed(repo_copy) == {"train_generator@memory"}
    repro = subprocess.Popen(
        exe("dvc", "repro", "train_generator@memory"),
        cwd=repo_copy,
        env=tool_env(repo_copy),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    killed_at = kill_after_checkpoint(repo_copy, repro)
    assert repro.returncode != 0
    out = run(["dvc", "repro", "train_generator@memory"], repo_copy).stdout
    assert "Running stage 'train_generator@memory'" in out and "Running stage 'sync_check'" not in out
    log = (repo_copy / "logs/train_generator-memory.log").read_text()
    assert f"at step {killed_at}" in log.split("resuming train_generator (memory) from")[-1]
    assert json.loads((repo_copy / "metrics/train_generator_memory.json").read_text())["steps"] == 24
    left = dvc_changed(repo_copy)
    assert "train_generator@memory" not in left and left <= {"evaluate", "demo", "report"}
