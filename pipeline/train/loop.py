"""Training machinery shared by the stages, with no framework magic.

- Device: CUDA when present (bf16 autocast where supported, fp16 + GradScaler where not), else CPU
  (bf16 autocast when the CPU has bf16 instructions, AVX512-BF16 or AMX; fp32 otherwise).
- DDP: rank and world size from torchrun (RANK/WORLD_SIZE/LOCAL_RANK) or SLURM (SLURM_PROCID/
  SLURM_NTASKS/SLURM_LOCALID); NCCL on GPUs, gloo on CPU. With `processes > 1` and no launcher,
  the stage starts its own workers (`spawn`), so its command is the same under every orchestrator.
- Checkpoints: model(s), optimiser(s), scaler, step and every RNG state, written atomically;
  SIGTERM and SIGUSR1 ask the loop to checkpoint at the next step boundary and stop (preemption).
- Batches: a pure function of (seed, step, rank), so a resumed run sees exactly the batches the
  uninterrupted run would have seen.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..runtime import atomic_file, launcher_env  # noqa: F401  (launcher_env: used here and by callers of loop)

log = logging.getLogger("pipeline")


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    amp_dtype: torch.dtype | None = None
    scaler: object | None = None
    threads: int = 1  # this process's torch threads (a checkpoint records them: numerics())

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def precision(self) -> str:
        """What the autocast regions compute in: bf16, fp16 or fp32 (recorded with every run)."""
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.amp_dtype, "fp32")

    @property
    def device_name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return "cpu"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup(amp: bool = True, rank: int | None = None, world_size: int | None = None, local_rank: int = 0) -> Runtime:
    env = launcher_env()
    if rank is None and env:
        rank, world_size, local_rank = env
    rank, world_size = rank or 0, world_size or 1
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        from ..runtime import slurm_master

        master = slurm_master()  # srun tasks: the job's first node; torchrun sets both itself
        os.environ.setdefault("MASTER_ADDR", master[0] if master else "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(master[1]) if master else "29500")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    rt = Runtime(device, rank, world_size, local_rank)
    if amp and device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            rt.amp_dtype = torch.bfloat16
        else:  # e.g. V100: fp16 needs a gradient scaler
            rt.amp_dtype = torch.float16
            rt.scaler = torch.amp.GradScaler("cuda")
    elif amp and cpu_native_bf16():
        rt.amp_dtype = torch.bfloat16  # no scaler: bf16 has fp32's exponent range
    return rt


def cpu_native_bf16(cpuinfo: str | None = None) -> bool:
    """True when this CPU computes bf16 in hardware (AVX512-BF16: AMD Zen 4 and later, Intel
    Cooper Lake; AMX-BF16: Intel Sapphire Rapids and later) and oneDNN can use it. There the
    training stages' convolutions run in bf16 under autocast (1.3-1.6x faster on a 2-core Zen 4,
    benchmarks/train_step.py and sync_expert.py); elsewhere bf16 is emulated and slower than
    fp32, so those CPUs stay in fp32."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux: fp32
            return False
    if not re.search(r"\b(avx512_bf16|amx_bf16)\b", cpuinfo):
        return False
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


RANK_THREADS_VAR = "PIPELINE_RANK_THREADS"  # each training process's threads, set by run_workers


def worker_setup(amp: bool, rank: int, world: int) -> Runtime:
    """A training worker's runtime: rank `rank` of `world` when the stage spawned its workers
    (else the launcher's, or a single process), and the threads run_workers chose for it."""
    from ..runtime import threads

    if launcher_env() is not None:  # torchrun / srun: rank, world size and local rank from them
        rt = setup(amp=amp)
    else:
        rt = setup(amp=amp, rank=rank if world > 1 else None, world_size=world if world > 1 else None, local_rank=rank)
    value = os.environ.get(RANK_THREADS_VAR, "")
    rt.threads = int(value) if value.isdigit() and int(value) > 0 else max(1, threads() // rt.world_size)
    torch.set_num_threads(rt.threads)
    return rt


def numerics(rt: Runtime) -> dict:
    """What decides a training's floating-point sums besides its inputs: threads per process,
    processes, precision and device. A checkpoint records it; a resume keeps it (run_workers) or
    says that it cannot (check_resume)."""
    return {"threads": rt.threads, "world_size": rt.world_size, "precision": rt.precision, "device": rt.device_name}


def saved_numerics(ckpt_path: str | Path) -> dict | None:
    """The numerics() a checkpoint was written with (None: no checkpoint, or one from before they
    were recorded)."""
    path = Path(ckpt_path)
    if not path.is_file():
        return None
    return load_checkpoint(path).get("numerics")


def resume_threads(ckpt_path: Path) -> int | None:
    """The threads per process of the run a checkpoint continues (None: a new run), for
    run_workers. A one-process run's stage (its final check) then also computes with the count
    its training had."""
    saved = saved_numerics(ckpt_path)
    if not saved:
        return None
    if saved.get("world_size", 1) == 1 and saved["threads"] != torch.get_num_threads():
        log.info(
            "continuing with %d thread(s) per process, as the checkpoint's run (this process has %d)",
            saved["threads"],
            torch.get_num_threads(),
        )
        torch.set_num_threads(saved["threads"])
    return saved["threads"]


def check_resume(rt: Runtime, saved: dict | None, what: str) -> None:
    """Log, as a warning, every way this resumed process computes differently from the one that
    wrote the checkpoint: then the run continues, but not into the bytes of an uninterrupted run."""
    if not saved:
        return
    now = numerics(rt)
    differs = [
        f"{k} {saved[k]} -> {now[k]}"
        for k in ("precision", "world_size", "threads", "device")
        if k in saved and saved[k] != now[k]
    ]
    if differs:
        log.warning(
            "%s: resumed with other numerics than the checkpoint's (%s): the result will not be "
            "byte-identical to an uninterrupted run",
            what,
            "; ".join(differs),
        )


def teardown(rt: Runtime) -> None:
    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()


def autocast(rt: Runtime):
    if rt.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=rt.device.type, dtype=rt.amp_dtype)


def backward_step(
    rt: Runtime, loss: torch.Tensor, optimiser, params=None, clip: float | None = None, scaler=None
) -> float:
    """One optimiser step (scaled when fp16 needs it); returns the gradient norm before clipping
    when `clip` is set, else nan. `scaler` overrides the runtime's (a second network's own)."""
    scaler = scaler if scaler is not None else rt.scaler
    optimiser.zero_grad(set_to_none=True)
    norm = float("nan")
    params = list(params) if params is not None else None
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimiser)
        if clip:
            norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        scaler.step(optimiser)
        scaler.update()
    else:
        loss.backward()
        if clip:
            norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        optimiser.step()
    return norm


def all_mean(rt: Runtime, value: float) -> float:
    if not rt.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=rt.device)
    dist.all_reduce(t)
    return float(t.item()) / rt.world_size


def any_rank(rt: Runtime, flag: bool) -> bool:
    """True on every rank when it is true on any (so all ranks stop at the same step)."""
    if not rt.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=rt.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def run_workers(fn, processes: int, *args, threads: int | None = None) -> None:
    """Run fn(rank, world_size, *args) in `processes` DDP workers, unless a launcher (torchrun,
    srun) already started this process as one of them.

    Each worker gets `threads` torch threads (a resumed run: the count its checkpoint recorded),
    else its share of the threads this process was pinned to. Workers this function starts begin
    with every library's thread variables at that count (runtime.pin_threads); so does a single
    worker whose count differs from this process's: it runs in a fresh process rather than here."""
    from ..runtime import threads as pinned

    env = launcher_env()
    world = env[1] if env is not None else max(1, processes)
    per_rank = int(threads) if threads else max(1, pinned() // world)
    old_rank_threads = os.environ.get(RANK_THREADS_VAR)
    os.environ[RANK_THREADS_VAR] = str(per_rank)  # for worker_setup, here or in the workers
    try:
        if env is not None or (processes <= 1 and per_rank == pinned()):
            rank, world, local = env or (0, 1, 0)
            fn(rank, world, *args)
            return
        _spawn_workers(fn, max(1, processes), per_rank, args)
    finally:
        if old_rank_threads is None:
            os.environ.pop(RANK_THREADS_VAR, None)
        else:
            os.environ[RANK_THREADS_VAR] = old_rank_threads


def _spawn_workers(fn, processes: int, per_rank: int, args: tuple) -> None:
    from ..errors import PipelineError
    from ..runtime import thread_env

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(free_port())
    import torch.multiprocessing as tmp

    with thread_env(per_rank):  # what the workers' libraries start with
        ctx = tmp.spawn(_spawned, args=(processes, fn, args), nprocs=processes, join=False)
    received: list[int] = []

    def forward(signum, frame):  # preemption: every worker checkpoints and stops at the same step
        received.append(signum)
        for proc in ctx.processes:
            if proc.is_alive():
                os.kill(proc.pid, signum)

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        while not ctx.join():
            pass
    except tmp.ProcessRaisedException as exc:
        if received and "Preempted" in str(exc):
            raise Preempted(received[0], -1) from None
        message = str(exc).rstrip().rsplit("PipelineError: ", 1)
        if len(message) == 2:  # a worker's clear error stays one: the CLI prints it, not a traceback
            raise PipelineError(message[1].strip()) from None
        raise
    except tmp.ProcessExitedException:
        if received:  # a signal forwarded before the worker could catch it
            raise Preempted(received[0], -1) from None
        raise
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _spawned(rank: int, world: int, fn, args) -> None:
    from ..runtime import setup_logging

    setup_logging(os.environ.get("PIPELINE_LOG_FILE"), append=True)  # workers log where the stage logs
    fn(rank, world, *args)


# ------------------------------------------------------------------------- batches and RNG
def batch_indices(seed: int, step: int, rank: int, batch: int, n: int) -> list[int]:
    """The global sample indices of one rank's batch at `step` (index // n is the epoch)."""
    rng = np.random.default_rng([seed, step, rank, 104729])
    return (rng.integers(0, n, batch) + n * (step * batch // max(1, n))).tolist()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | Path, state: dict) -> None:
    with atomic_file(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict:
    return torch.load(path, map_location=device, weights_only=False)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


class StopRequest:
    """SIGTERM / SIGUSR1 set a flag; the loop checkpoints at the next step boundary and stops."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old = {}
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside a test runner thread)
                pass

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def __bool__(self) -> bool:
        return self.signal is not None

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Preempted(Exception):
    """Raised after the checkpoint is written; the CLI exits with 128 + the signal number."""

    def __init__(self, signum: int, step: int):
        at = f" at step {step}" if step >= 0 else ""
        super().__init__(f"stopped by signal {signum}{at}; checkpoint saved, re-run to continue")
        self.signum = signum
        self.step = step
