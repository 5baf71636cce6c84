"""MLflow conventions in one place (docs/design.md §7).

One experiment per dataset, one run per stage execution named `<stage>-<fingerprint[:7]>`,
tagged with git commit and dirty flag, input fingerprint, dataset, device and variant. The
store is the main repository's (`sqlite:///<main repo>/mlflow.db`, artifacts in
`<main repo>/mlruns`), resolved from git's common dir so that `dvc exp run --queue`
workspaces log to the same place. MLFLOW_TRACKING_URI overrides. Only the process that calls
`stage_run` writes (single process, DDP rank 0, or the gather stage).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .config import flatten


def _git(*args: str, cwd: str | Path = ".") -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def main_repo_root(cwd: str | Path = ".") -> Path:
    """The main work tree of the git repository (also from a linked worktree), else cwd."""
    common = _git("rev-parse", "--path-format=absolute", "--git-common-dir", cwd=cwd)
    if common:
        p = Path(common)
        return p.parent if p.name == ".git" else p
    return Path(cwd).resolve()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{main_repo_root() / 'mlflow.db'}"


# What can change a stage's result: the code, the workflow (rules, schema, presets), the params.
# The outputs a run itself writes (metrics/, plots/, dvc.lock) and the docs do not make it dirty.
RESULT_PATHS = ("pipeline", "workflow", "params.yaml", "dvc.yaml", "Snakefile", "pyproject.toml", "environment.yml")


def git_state() -> dict[str, str]:
    """The commit, and whether the working tree differs from it in what can change the result."""
    commit = _git("rev-parse", "HEAD") or "none"
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", *RESULT_PATHS)
    return {"git_commit": commit, "git_dirty": str(bool(dirty)).lower() if dirty is not None else "unknown"}


def _experiment(mlflow, dataset: str) -> str:
    name = f"synctalkface-{dataset}"
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifacts = (main_repo_root() / "mlruns").as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=artifacts)
    except Exception:  # another process created it meanwhile
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


@dataclass
class Tracker:
    """A handle on one MLflow run that any process can log to (it pickles to uri + run id), so
    DDP rank 0 in a spawned worker logs live to the run its parent opened."""

    uri: str
    run_id: str

    def _client(self):
        import mlflow

        return mlflow.MlflowClient(self.uri)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k[:250], float(v), now, step or 0)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
        ]
        if items:
            self._client().log_batch(self.run_id, metrics=items)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._client().log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: dict) -> None:
        client = self._client()
        for k, v in tags.items():
            client.set_tag(self.run_id, k, str(v))

    def tag_model(self, path: str | Path) -> None:
        """Record which model file this run wrote (its SHA-256), so that a later run can find the
        run behind a file it uses (run_of_model) without the file holding a run id: the outputs of
        a seeded run stay byte-identical from one run to the next, and DVC's lock stays valid."""
        self.set_tags({"model_sha256": file_sha256(path)})


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_of_model(path: str | Path, stage: str) -> str:
    """The id of the latest finished MLflow run of `stage` that wrote this model file (by content),
    'none' when no run did (a file made elsewhere), 'unknown' when the store cannot be read. Never
    raises: a link between runs must not fail the stage that asks for it."""
    try:
        import mlflow

        sha = file_sha256(path)
        mlflow.set_tracking_uri(tracking_uri())
        runs = mlflow.search_runs(
            search_all_experiments=True,
            output_format="list",
            max_results=1,
            filter_string=f"tags.stage = '{stage}' and tags.model_sha256 = '{sha}'",
            order_by=["start_time DESC"],
        )
        return runs[0].info.run_id if runs else "none"
    except Exception:  # noqa: BLE001
        return "unknown"


@contextmanager
def stage_run(
    stage: str, dataset: str, params_view: dict, fingerprint: str, tags: dict | None = None, label: str | None = None
):
    """An MLflow run for one stage execution; yields a Tracker."""
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    import logging

    import mlflow

    for noisy in ("alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    exp_id = _experiment(mlflow, dataset)
    all_tags = {"stage": stage, "dataset": dataset, "input_fingerprint": fingerprint, **git_state(), **(tags or {})}
    with mlflow.start_run(experiment_id=exp_id, run_name=f"{label or stage}-{fingerprint[:7]}", tags=all_tags) as run:
        flat = {k: ("null" if v is None else v) for k, v in flatten(params_view).items()}
        mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})
        yield Tracker(uri, run.info.run_id)
