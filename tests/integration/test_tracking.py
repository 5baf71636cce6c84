"""MLflow conventions: the main repository's store, run naming, tags, params, metrics."""

from __future__ import annotations

import os
import subprocess

import yaml
from helpers import copy_repo, git_env, run_cli, tiny_params


def test_stage_runs_are_tracked_in_the_main_repos_store(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    # a linked worktree (as `dvc exp run --queue` uses) must log to the main repository's store
    subprocess.run(["git", "commit", "-qam", "tiny"], cwd=repo, env=git_env(), check=True)
    wt = tmp_path / "wt"
    subprocess.run(["git", "worktree", "add", "-q", str(wt)], cwd=repo, env=git_env(), check=True)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["MLFLOW_TRACKING_URI"] = ""
    run_cli(["acquire"], cwd=wt, env=env, check=True)
    run_cli(["index"], cwd=wt, env=env, check=True)
    assert (repo / "mlflow.db").is_file() and not (wt / "mlflow.db").exists()

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("synctalkface-embedded")
    runs = {r.data.tags["stage"]: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"acquire", "index"}
    idx = runs["index"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=wt, capture_output=True, text=True).stdout.strip()
    assert idx.data.tags["git_commit"] == head and idx.data.tags["git_dirty"] == "false"
    assert idx.data.tags["dataset"] == "embedded" and len(idx.data.tags["input_fingerprint"]) == 16
    assert idx.info.run_name == f"index-{idx.data.tags['input_fingerprint'][:7]}"
    assert idx.data.params["index.min_frames"] == "9" and idx.data.params["data.dataset"] == "embedded"
    assert "data.embedded.seed" not in idx.data.params  # only the params the stage declares
    assert idx.data.metrics["clips"] == 7 and idx.data.metrics["rejected"] == 0
    assert runs["acquire"].data.metrics["clips.train"] == 4
    assert exp.artifact_location.startswith((repo / "mlruns").as_uri())

    # a run's own outputs and the docs changed in the tree: still clean; the code changed: dirty
    for tracked in ("README.md", "dvc.lock"):
        (wt / tracked).write_text((wt / tracked).read_text() + "\n")
    run_cli(["index"], cwd=wt, env=env, check=True)
    (wt / "pipeline/stages.py").write_text((wt / "pipeline/stages.py").read_text() + "\n")
    run_cli(["index"], cwd=wt, env=env, check=True)
    index_runs = client.search_runs([exp.experiment_id], "tags.stage = 'index'", order_by=["attributes.start_time ASC"])
    assert [r.data.tags["git_dirty"] for r in index_runs] == ["false", "false", "true"]
