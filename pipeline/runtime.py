"""What a stage needs from its surroundings: cores, logging, fingerprints, atomic writes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import sys
from collections.abc import Iterable
from pathlib import Path

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


# every numeric library's thread-count variable: OpenMP (torch's intra-op pool, oneDNN), MKL,
# OpenBLAS/GotoBLAS and BLIS (numpy), Accelerate, numexpr
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "GOTO_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
THREADS_VAR = "PIPELINE_THREADS"  # the count this process pinned (read by threads())


def pin_threads(n: int | None = None) -> int:
    """Give every numeric library `n` threads (default: the cores this job may use) and return n.

    A stage's numbers depend on its thread count (a convolution's gradient is summed in another
    order by 1 and by 2 threads), and what an orchestrator exports differs: Snakemake sets
    OMP_NUM_THREADS and MKL_NUM_THREADS to the rule's threads, DVC sets nothing, and then torch
    and MKL count physical cores (1 on a 2-CPU machine with hyper-threading). `python -m pipeline`
    calls this before numpy or torch is imported, so every stage starts from the same settings
    whatever its parent exported. Later calls (a resumed training that must keep the count it
    started with) also set torch's count; processes started after that inherit the variables."""
    n = int(n) if n else available_cores()
    if n < 1:
        raise ValueError(f"thread count must be at least 1, got {n}")
    for var in (*THREAD_VARS, THREADS_VAR):
        os.environ[var] = str(n)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
    return n


@contextlib.contextmanager
def thread_env(n: int):
    """Every thread variable at `n` while processes are started in this block (they inherit the
    environment; their libraries then start with n threads); this process's own are restored."""
    saved = {var: os.environ.get(var) for var in (*THREAD_VARS, THREADS_VAR)}
    os.environ.update({var: str(n) for var in saved})
    try:
        yield
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def threads() -> int:
    """The thread count pinned for this process (pin_threads), else the cores it may use."""
    value = os.environ.get(THREADS_VAR, "")
    return int(value) if value.isdigit() and int(value) > 0 else available_cores()


def launcher_env() -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) when torchrun or srun started this process as one of
    several, else None."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        return int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"]), int(os.environ.get("SLURM_LOCALID", 0))
    return None


def launcher_rank() -> int:
    """This process's rank when torchrun or srun started several (0 otherwise): only rank 0
    writes outputs and MLflow runs (docs/design.md §7)."""
    env = launcher_env()
    return env[0] if env else 0


def slurm_restarts() -> int:
    """How many times SLURM has started this job again (requeue after preemption or USR1).
    SLURM_RESTART_COUNT when set; Snakemake's job-step plugin drops it from the stage's
    environment (it keeps SLURM_JOB_ID), so then `scontrol show job` says."""
    value = os.environ.get("SLURM_RESTART_COUNT")
    if value is not None:
        return int(value) if value.isdigit() else 0
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return 0
    import re
    import subprocess

    try:
        out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    m = re.search(r"\bRestarts=(\d+)", out)
    return int(m.group(1)) if m else 0


def slurm_requeue() -> bool:
    """Put this SLURM job back in the queue (rank 0 of a job started with --requeue), so that it
    starts again and resumes from its checkpoint. False outside SLURM or when SLURM refuses."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job or launcher_rank() != 0:
        return False
    import subprocess

    proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if proc.returncode != 0:
        log.warning("scontrol requeue %s failed (%s): re-run the stage to continue", job, proc.stderr.strip())
        return False
    return True


def slurm_master() -> tuple[str, int] | None:
    """DDP rendezvous for tasks started by srun: the job's first node and a port derived from the
    job id (the same on every task without any exchange); None outside a multi-task SLURM step."""
    job, nodes = (
        os.environ.get("SLURM_JOB_ID"),
        os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST"),
    )
    if not job or not nodes or int(os.environ.get("SLURM_NTASKS", "1")) < 2:
        return None
    return first_host(nodes), 20000 + int(job) % 20000


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'gpu[07-09,12],cpu1' -> 'gpu07'."""
    import re

    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise ValueError(f"cannot read SLURM node list {nodelist!r}")
    prefix, ranges = m.group(1), m.group(2)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


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


def finite_json(data):
    """`data` with every NaN or infinite float replaced by None: JSON has no NaN (Python writes
    one that other readers, DVC's among them, reject)."""
    if isinstance(data, dict):
        return {k: finite_json(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_json(v) for v in data]
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data


TIMING_KEYS = ("train_seconds", "wall_seconds", "frames_per_second")


def without_timings(metrics: dict) -> dict:
    """The metrics a stage writes into its output files: all but how long it took. Timings vary
    from run to run; in an output they would make a seeded re-run's files differ and DVC's lock
    go stale. They go to MLflow (the stage's returned summary) and the log instead."""
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


@contextlib.contextmanager
def atomic_file(path: str | Path, keep_suffix: bool = False):
    """Yield a temporary name beside `path` to write to; it becomes `path` when the block ends and
    is removed when it raises, so a reader never sees half a file. The name is `.NAME.tmp-PID`, or
    `.STEM.tmp-PID.SUFFIX` with keep_suffix (for writers that choose the format by the suffix:
    images, npz, mp4). torch.save names its archive after the file minus its last suffix: with
    the default form that is `.NAME`, the same in every run."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = f".{path.stem}.tmp-{os.getpid()}{path.suffix}" if keep_suffix else f".{path.name}.tmp-{os.getpid()}"
    tmp = path.with_name(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_folder(path: str | Path):
    """Yield an empty temporary folder `.NAME.tmp-PID` beside `path`; when the block ends it
    replaces `path` (the old folder removed first), and when the block raises it is removed: an
    output folder is either the old one or the whole new one."""
    import shutil

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json_atomic(path: str | Path, data) -> None:
    text = json.dumps(finite_json(data), indent=2, sort_keys=True, allow_nan=False) + "\n"
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_parquet_atomic(df, path: str | Path) -> None:
    with atomic_file(path) as tmp:
        df.to_parquet(tmp, index=False)


def write_curves_csv(rows: list[dict], fields: list[str], path: str | Path) -> None:
    """Per-step curves for `dvc plots` (floats rounded to 6 digits, missing values empty)."""
    import csv

    with atomic_file(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: (round(row[k], 6) if isinstance(row.get(k), float) else row.get(k, "")) for k in fields})
