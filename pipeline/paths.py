"""Where each stage writes (docs/design.md §3: one folder per stage). Paths are repo-relative."""

from __future__ import annotations

from pathlib import Path


def raw_dir(dataset: str) -> Path:
    """acquire's output: the embedded corpus, or source.json recording an adopted copy."""
    return Path("data/raw") / dataset


def source_record(dataset: str) -> Path:
    return raw_dir(dataset) / "source.json"


def manifest(dataset: str) -> Path:
    return Path("data/manifests") / f"{dataset}.parquet"


def rejects(dataset: str) -> Path:
    return Path("data/manifests") / f"{dataset}_rejects.parquet"


def metrics(stage: str) -> Path:
    return Path("metrics") / f"{stage}.json"


def log(stage: str) -> Path:
    return Path("logs") / f"{stage}.log"


def work_dir(stage: str, fingerprint: str) -> Path:
    """Resumable state outside declared outputs (docs/design.md §3)."""
    return Path("work") / stage / fingerprint


def processed_dir(dataset: str) -> Path:
    return Path("data/processed") / dataset


def processed_shards(dataset: str) -> Path:
    """The folder of all shards (DVC's gather depends on it as a whole)."""
    return processed_dir(dataset) / "shards"


def processed_shard(dataset: str, shard: int | str) -> Path:
    return processed_shards(dataset) / f"shard-{shard}"


def processed_index(dataset: str) -> Path:
    return processed_dir(dataset) / "index.parquet"


def processed_failures(dataset: str) -> Path:
    return processed_dir(dataset) / "failures.parquet"


def shard_log(shard: int | str) -> Path:
    return Path("logs") / f"preprocess-{shard}.log"


def model_dir(name: str) -> Path:
    return Path("models") / name


def plot(stage: str) -> Path:
    return Path("plots") / f"{stage}.csv"


def sync_check_dir(dataset: str) -> Path:
    return Path("data/sync_check") / dataset


def eval_dir() -> Path:
    return Path("reports/eval")


def report_dir() -> Path:
    return Path("reports/html")


def demo_dir() -> Path:
    return Path("reports/demo")
