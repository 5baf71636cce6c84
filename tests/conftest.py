"""Shared fixtures: a tiny embedded corpus, its processed copy, a trained expert, a whole tiny run,
an isolated MLflow store. Helpers without fixtures: tests/helpers.py."""

from __future__ import annotations

from helpers import (  # first: it pins the thread count before numpy and torch load
    copy_repo,
    default_params,
    expert_params,
    git_env,
    lrw_from_corpus,
    make_clip,
    run_cli,
    run_tool,
    set_params,
    tiny_params,
)

# isort: split
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state, whichever tests ran before it (an unseeded
    model init once made a weak check pass locally and fail in CI)."""
    import random

    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _isolated_mlflow(tmp_path_factory):
    """Stages run by the tests log to a store of their own, never the developer's."""
    store = tmp_path_factory.mktemp("mlflow")
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
    yield store
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


@pytest.fixture
def clip_factory():
    return make_clip


@pytest.fixture(scope="session")
def embedded_corpus(tmp_path_factory):
    """A tiny embedded corpus built once per test session: (params section, folder, summary)."""
    from pipeline.data import embedded

    cfg = tiny_params()["data"]["embedded"]
    out = tmp_path_factory.mktemp("emb") / "embedded"
    summary = embedded.build(cfg, out, workers=2)
    return cfg, out, summary


@pytest.fixture(scope="session")
def processed(embedded_corpus, tmp_path_factory):
    _, corpus_dir, _ = embedded_corpus
    work = tmp_path_factory.mktemp("pre")
    root = lrw_from_corpus(corpus_dir, work / "LRW")
    params = default_params()
    params["data"]["dataset"] = "lrw"
    params["data"]["lrw"]["root"] = str(root)
    params["index"]["decode_check"] = False  # let the truncated clip reach preprocessing
    params["preprocess"]["max_reject_fraction"] = 0.6
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for args in (["acquire"], ["index"], ["preprocess", "--shard", "0"], ["preprocess", "--shard", "1"], ["gather"]):
        run_cli(args, cwd=work, check=True)
    return work, params


@pytest.fixture(scope="session")
def expert_project(processed, tmp_path_factory):
    """The processed LRW copy with a trained expert and sync_check's table (the generator's
    inputs): (project folder, params)."""
    work, params = processed
    proj = tmp_path_factory.mktemp("expert") / "proj"
    proj.mkdir()
    os.symlink(work / "data", proj / "data")
    p = expert_params(params)
    (proj / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    run_cli(["train_sync_expert"], cwd=proj, check=True)
    run_cli(["sync_check"], cwd=proj, check=True)
    return proj, p


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A repository copy in which Snakemake ran the whole default graph once at test size
    (tiny_params, committed). Tests copy it with `clone_run` instead of running the graph again.
    PIPELINE_TEST_TINY_RUN=<folder> reuses such a run across pytest sessions (test development)."""
    reuse = os.environ.get("PIPELINE_TEST_TINY_RUN")
    if reuse and (Path(reuse) / ".run_seconds").is_file():
        return Path(reuse)
    root = copy_repo(tmp_path_factory.mktemp("tiny_run") / "repo")
    set_params(root, tiny_params())
    subprocess.run(["git", "commit", "-qam", "tiny params"], cwd=root, env=git_env(), check=True)
    started = time.time()
    run_tool(["snakemake", "--cores", "2"], root)
    (root / ".run_seconds").write_text(f"{time.time() - started:.1f}")  # the SLURM test compares
    return root
