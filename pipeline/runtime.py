"""What a stage needs from its surroundings: cores, logging, fingerprints, atomic writes."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Iterable

log = logging.getLogger("pipeline")


def available_cores() -> int:
    """Cores this job may use: SLURM's allocation, else CPU affinity, else the cgroup quota."""
    for var in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
        if os.environ.get(var, "").isdigit():
            return max(1, int(os.environ[var]))
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            n = min(n, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def launcher_rank() -> int:
    """This process's rank when torchrun or srun started several (0 otherwise): only rank 0
    writes outputs and MLflow runs (DESIGN §7)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"])
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        return int(os.environ["SLURM_PROCID"])
    return 0


def workers(requested: int) -> int:
    return requested if requested > 0 else available_cores()


def setup_logging(log_file: str | None, append: bool = False) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    root = logging.getLogger("pipeline")
    root.setLevel(logging.INFO)
    root.handlers.clear()
    err = logging.StreamHandler(sys.stderr)
    err.setFormatter(fmt)
    root.addHandler(err)
    if log_file:
        os.environ["PIPELINE_LOG_FILE"] = str(Path(log_file).resolve())  # for spawned DDP workers
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        if not append:
            open(log_file, "w").close()
        # append mode (O_APPEND) for every writer, so DDP workers and the parent never overwrite each other
        fh = logging.FileHandler(log_file, mode="a", encoding="utf-8")
        fh.setFormatter(fmt)
        root.addHandler(fh)


def sha1_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint(params_view: dict, inputs: Iterable[str | Path]) -> str:
    """Hash of a stage's params section and its inputs' contents (files, or folders walked)."""
    h = hashlib.sha256(json.dumps(params_view, sort_keys=True).encode())
    for inp in sorted(str(p) for p in inputs):
        p = Path(inp)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p] if p.exists() else []
        for f in files:
            h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
            h.update(sha1_file(f).encode())
    return h.hexdigest()[:16]


def write_json_atomic(path: str | Path, data) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_parquet_atomic(df, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def write_curves_csv(rows: list[dict], fields: list[str], path: str | Path) -> None:
    """Per-step curves for `dvc plots` (floats rounded to 6 digits, missing values empty)."""
    import csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: (round(row[k], 6) if isinstance(row.get(k), float) else row.get(k, "")) for k in fields})
    os.replace(tmp, path)
