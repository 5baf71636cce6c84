"""The stage runner: what every stage execution gets around its `run(view, ctx)`.

Params loaded and validated (before any work), the stage's view of them, logging (appending
where several processes or a requeued SLURM job share one log), the MLflow run with the
fingerprint of the params view and the declared inputs, the summary line and its metrics. The
registry (pipeline/stages.py) says what differs between stages; the CLI only parses arguments.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import sys
import time
from pathlib import Path

from . import config, runtime, tracking
from .stages import STAGES, StageContext

log = logging.getLogger("pipeline")


def fingerprint_files(path: Path) -> list[Path]:
    """The files whose content stands for an input in a run's fingerprint: a file itself; for a
    folder, the records it keeps of itself where it has them (an acquired corpus: source.json;
    preprocessed shards: each shard's meta.json, which holds the sha1 of every file), else every
    file in it. Records keep a fingerprint of LRW's tens of GB cheap."""
    if not path.is_dir():
        return [path]
    if (path / "source.json").is_file():
        return [path / "source.json"]
    records = sorted(path.glob("*/meta.json"))
    return records or [path]


def _summary_items(summary: dict) -> list[tuple[str, object]]:
    return [
        (k, v)
        for k, v in config.flatten(summary).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith(("params.", "build_"))
    ]


def _device_tag() -> str:
    torch = sys.modules.get("torch")  # only stages that use torch pay for importing it
    if torch is not None and torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return "cpu"


def run_stage(name: str, params_path: str, log_file: str | None, argument=None) -> dict:
    """Run stage `name` (its argument: the shard or the variant, where the registry gives it one);
    returns the stage's summary."""
    spec = STAGES[name]
    params = config.load(params_path)  # exit 2 before any work when invalid
    view = config.stage_view(params, spec.params)
    ctx = StageContext(**({spec.argument: argument} if spec.argument else {}))
    run_name = name
    if spec.argument == "variant":
        view = {**view, "variant": argument}  # each variant is its own run (and fingerprint)
    if spec.argument:
        run_name = f"{name}-{argument}"
    # processes started together by srun/torchrun, or a SLURM job run again after a requeue, add
    # to the log (no rank may truncate what another has written)
    launched, restarts = runtime.launcher_env(), runtime.slurm_restarts()
    runtime.setup_logging(log_file, append=(launched is not None and launched[1] > 1) or restarts > 0)
    if os.environ.get("SLURM_JOB_ID"):
        log.info(
            "%s: SLURM job %s (restart %d, task %s of %s) on %s",
            name,
            os.environ["SLURM_JOB_ID"],
            restarts,
            os.environ.get("SLURM_PROCID", "0"),
            os.environ.get("SLURM_NTASKS", "1"),
            socket.gethostname(),
        )
    module = importlib.import_module(spec.module)
    ds = params["data"]["dataset"]
    tags = {"device": _device_tag(), **({"shard": str(argument)} if spec.argument == "shard" else {})}
    inputs = [f for p in spec.input_paths(view) for f in fingerprint_files(p)]
    started = time.time()
    tracker = None
    if spec.tracking == "after":  # the stage makes its own inputs: fingerprint afterwards
        summary = module.run(view, ctx)
        with tracking.stage_run(name, ds, view, runtime.fingerprint(view, inputs), tags=tags, label=run_name) as t:
            tracker = t
    elif spec.tracking == "none" or runtime.launcher_rank() != 0:
        # shard jobs run in parallel (gather is the stage's one MLflow writer); under torchrun or
        # srun only rank 0 writes the run
        summary = module.run(view, ctx)
    else:
        fp = runtime.fingerprint(view, inputs)
        with tracking.stage_run(name, ds, view, fp, tags=tags, label=run_name) as tracker:
            ctx.tracker = tracker
            summary = module.run(view, ctx)
    seconds = time.time() - started
    items = _summary_items(summary)
    if tracker is not None:
        tracker.log_metrics({**dict(items), "wall_seconds": seconds})
    line = f"{run_name}: {ds}: " + ", ".join(f"{k}={v}" for k, v in items) + f" in {seconds:.1f} s"
    log.info(line)
    print(line)
    return summary
