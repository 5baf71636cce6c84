"""The GPU check: the paper preset's training steps as a GPU runs them, in at most 8 minutes.

Cases, each in its own process (its peak memory is its own; a crash is that case's failure):
- `expert fp32`, `expert bf16`: Wav2Lip's sync expert (the paper preset: 128 px, width 1.0,
  batch 64) forward, in-clip BCE + contrastive loss, backward, Adam step; bf16 under autocast.
- `generator fp32`, `generator bf16`, `generator bf16 compile`: the memory generator's full
  training step (the paper preset: 128 px, width 1.0, batch 40, 5 frames; every loss with the
  frozen expert, G step then D step), the last with `torch.compile` (generator.compile).
- `ddp 1 process`: the generator's bf16 step wrapped in DistributedDataParallel in a one-process
  group (NCCL on a GPU), as a DDP run's every rank runs it.
- `resume`: the generator trained for 2k steps in one process, and for k steps, checkpointed
  (pipeline.train.loop), and k more in a new process; the weights must be equal bit for bit
  (a second uninterrupted run says whether the device itself repeats a run exactly).

Per case it prints samples/s (after one warm-up step) and peak memory (GPU: the allocator's peak;
CPU: the process' peak RSS), then bf16's and compile's speed against fp32 and, as the last line,
how many cases passed. Inputs are random tensors: the check needs no data and no weights.

Without a GPU (or with --tiny) it says so and runs the same cases at a tiny size (96 px, width
0.25, small batches, 2 steps; no compile: this project compiles on GPUs only; DDP over gloo),
which is what the test suite runs.

    .venv/bin/python benchmarks/gpu_check.py [--tiny] [--steps N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAPER = {"size": 128, "width": 1.0, "expert_batch": 64, "gen_batch": 40, "frames": 5, "steps": 10}
TINY = {"size": 96, "width": 0.25, "expert_batch": 8, "gen_batch": 2, "frames": 5, "steps": 2}
CASES = [
    "expert fp32",
    "expert bf16",
    "generator fp32",
    "generator bf16",
    "generator bf16 compile",
    "ddp 1 process",
    "resume",
]


def _peak_mib(device) -> float:
    import resource

    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(step, steps: int, device, batch: int) -> dict:
    import torch

    step(0)  # warm-up (and compilation) excluded
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for k in range(steps):
        step(k + 1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"samples_per_s": steps * batch / seconds, "peak_mib": _peak_mib(device)}


def expert_case(size: dict, amp: bool) -> dict:
    import torch

    from pipeline.models.syncnet import SyncNet, grouped_sync_losses
    from pipeline.train import loop

    rt = loop.setup(amp=amp)
    torch.manual_seed(0)
    model = SyncNet(size["size"], size["width"]).to(rt.device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    b = size["expert_batch"]
    g = torch.Generator().manual_seed(0)
    faces = torch.rand(b, 15, size["size"] // 2, size["size"], generator=g).to(rt.device)
    mel = (torch.rand(b, 1, 80, 16, generator=g) * 8 - 4).to(rt.device)
    groups = torch.arange(b, device=rt.device) // 8  # 8 windows of a clip per group, as the recipe

    def step(_):
        with loop.autocast(rt):
            a, v = model(mel, faces)
        bce, nce = grouped_sync_losses(a, v, groups)
        loop.backward_step(rt, bce + nce, opt)

    return {"device": rt.device_name, "precision": rt.precision, **_timed(step, size["steps"], rt.device, b)}


def _generator_state(size: dict, amp: bool, compile_g: bool = False):

    from pipeline import config
    from pipeline.models.syncnet import SyncNet
    from pipeline.train import gen_step, loop

    params = config.deep_merge(config.load(ROOT / "params.yaml"), config.load_preset("paper"))
    cfg = {
        **params["generator"],
        "width": size["width"],
        "batch_size": size["gen_batch"],
        "frames": size["frames"],
        "gan_warmup": 0,
        "compile": compile_g,
    }
    view = {"data": {"dataset": "embedded"}, "preprocess": {"img_size": size["size"]}, "generator": cfg}
    rt = loop.setup(amp=amp)
    loop.seed_everything(0)
    expert = SyncNet(size["size"], size["width"]).to(rt.device).eval()
    for p in expert.parameters():
        p.requires_grad_(False)
    return gen_step.TrainState(view, "memory", rt, expert), rt


def _generator_batch(size: dict, step: int, device) -> dict:
    import torch

    g = torch.Generator().manual_seed(1000 + step)  # each step its own batch, the same in every run
    b, t, s = size["gen_batch"], size["frames"], size["size"]
    r = lambda *shape: (torch.rand(*shape, generator=g) * 2 - 1).to(device)
    return {
        "target": r(b, t, 3, s, s),
        "masked": r(b, t, 3, s, s),
        "reference": r(b, t, 3, s, s),
        "mel": r(b, t, 1, 80, 16) * 4,
        "lip": r(b, t, 3, 5, s, s),
    }


def generator_case(size: dict, amp: bool, compile_g: bool = False, ddp: bool = False) -> dict:
    import torch

    if ddp:
        import torch.distributed as dist

        from pipeline.train import loop

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{loop.free_port()}", rank=0, world_size=1)
    state, rt = _generator_state(size, amp, compile_g)
    if ddp:
        state.net_g = torch.nn.parallel.DistributedDataParallel(state.net_g)
        state.net_d = torch.nn.parallel.DistributedDataParallel(state.d)
    batch = _generator_batch(size, 0, rt.device)
    result = _timed(lambda _: state.step_on(batch, use_gan=True), size["steps"], rt.device, size["gen_batch"])
    out = {"device": rt.device_name, "precision": rt.precision, **result}
    if ddp:
        out["backend"] = dist.get_backend()
        dist.destroy_process_group()
    return out


def resume_case(size: dict, steps: int, start: int, checkpoint: str | None, out: str) -> dict:
    """Train the generator (bf16 where the device has it) from step `start` (0, or the checkpoint's)
    to `steps`, then save every weight to `out`. At start = 0 with a checkpoint path, it stops
    halfway and writes the checkpoint instead (the 'killed' run)."""
    import torch

    from pipeline.train import loop

    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    state, rt = _generator_state(size, amp=True)
    if start:
        saved = loop.load_checkpoint(checkpoint, rt.device)
        state.load_state_dict(saved["state"])
        loop.set_rng_state(saved["rng"])
    for k in range(start, steps):
        state.set_lr(k)
        state.step_on(_generator_batch(size, k, rt.device), use_gan=True)
    if checkpoint and not start:
        loop.save_checkpoint(checkpoint, {"state": state.state_dict(), "rng": loop.rng_state(), "step": steps})
    else:
        torch.save({"g": state.g.state_dict(), "d": state.d.state_dict()}, out)
    return {"device": rt.device_name, "precision": rt.precision, "peak_mib": _peak_mib(rt.device)}


def _child(args: list[str], timeout: float) -> dict:
    import os

    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}  # deterministic cuBLAS for the resume case
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        lines = [x for x in proc.stderr.strip().splitlines() if x.strip()]
        return {"error": lines[-1] if lines else f"exit code {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _equal(a: str, b: str) -> tuple[bool, float]:
    import torch

    x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    diff = max(
        float((x[n][k].float() - y[n][k].float()).abs().max()) if x[n][k].numel() else 0.0 for n in x for k in x[n]
    )
    return diff == 0.0, diff


def run_resume(size: dict, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        t = Path(tmp)
        n, half = 2 * size["steps"], size["steps"]
        spec = json.dumps(size)
        runs = [
            ["resume", spec, str(n), "0", "", str(t / "straight.pt")],
            ["resume", spec, str(n), "0", "", str(t / "again.pt")],
            ["resume", spec, str(half), "0", str(t / "ckpt.pt"), ""],
            ["resume", spec, str(n), str(half), str(t / "ckpt.pt"), str(t / "resumed.pt")],
        ]
        results = [_child(r, timeout) for r in runs]
        errors = [r["error"] for r in results if "error" in r]
        if errors:
            return {"error": errors[0]}
        exact, diff = _equal(t / "straight.pt", t / "resumed.pt")
        repeat, repeat_diff = _equal(t / "straight.pt", t / "again.pt")
    return {
        **results[-1],
        "exact": exact,
        "max_diff": diff,
        "repeatable": repeat,
        "repeat_diff": repeat_diff,
        "steps": f"{n} straight vs {half} + {half} resumed",
    }


def child_main(args: list[str]) -> None:
    kind = args[0]
    size = json.loads(args[1])
    if kind == "expert":
        out = expert_case(size, amp=args[2] == "bf16")
    elif kind == "generator":
        out = generator_case(size, amp=args[2] == "bf16", compile_g=args[3] == "compile", ddp=args[4] == "ddp")
    else:
        out = resume_case(size, int(args[2]), int(args[3]), args[4] or None, args[5])
    print(json.dumps(out))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="the tiny size even on a GPU")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per case (resume: twice this)")
    ap.add_argument("--timeout", type=float, default=150.0, help="seconds per case process")
    ap.add_argument("--json", default=None, help="write every case's result here")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child_main(a.child)
        return 0
    import torch

    gpu = torch.cuda.is_available()
    size = dict(PAPER if gpu and not a.tiny else TINY)
    if a.steps:
        size["steps"] = a.steps
    if not gpu:
        print("no GPU on this machine: the CPU path at the tiny size (96 px, width 0.25); no compile, DDP over gloo")
    else:
        print(f"GPU: {torch.cuda.get_device_name(0)}; size: {'tiny' if a.tiny else 'the paper preset'}")
    spec = json.dumps(size)
    started = time.perf_counter()
    results = {}
    for case in CASES:
        if case == "generator bf16 compile" and not gpu:
            results[case] = {"skipped": "torch.compile runs on GPUs only in this project"}
        elif case == "resume":
            results[case] = run_resume(size, a.timeout)
        elif case.startswith("expert"):
            results[case] = _child(["expert", spec, case.split()[1]], a.timeout)
        else:
            precision = "fp32" if "fp32" in case else "bf16"
            compile_g = "compile" if "compile" in case else "-"
            results[case] = _child(
                ["generator", spec, precision, compile_g, "ddp" if case.startswith("ddp") else "-"], a.timeout
            )
        r = results[case]
        if "error" in r:
            line = f"FAILED: {r['error']}"
        elif "skipped" in r:
            line = f"skipped: {r['skipped']}"
        elif case == "resume":
            verdict = "exact" if r["exact"] else f"NOT exact (max |diff| {r['max_diff']:.3g})"
            repeat = "equal" if r["repeatable"] else f"differ by {r['repeat_diff']:.3g}"
            line = (
                f"{r['steps']}: {verdict}; two straight runs {repeat} ({r['precision']}, peak {r['peak_mib']:.0f} MiB)"
            )
        else:
            line = (
                f"{r['samples_per_s']:8.2f} samples/s, peak {r['peak_mib']:7.0f} MiB ({r['device']}, {r['precision']})"
            )
            line += f", backend {r['backend']}" if "backend" in r else ""
        print(f"{case:24s} {line}", flush=True)
    speed = lambda c: results[c].get("samples_per_s")
    for base, other in (
        ("expert fp32", "expert bf16"),
        ("generator fp32", "generator bf16"),
        ("generator bf16", "generator bf16 compile"),
    ):
        amp_off = "bf16" in other and "bf16" not in base and results[other].get("precision") == "fp32"
        if speed(base) and speed(other) and not amp_off:  # no bf16 on the device: no autocast ratio
            print(f"{other} against {base}: {speed(other) / speed(base):.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps({"size": size, "gpu": gpu, "results": results}, indent=1))
    failed = [c for c, r in results.items() if "error" in r or (c == "resume" and not r.get("exact"))]
    ran = [c for c, r in results.items() if "skipped" not in r]
    print(
        f"gpu_check: {len(ran) - len(failed)} of {len(ran)} cases passed on "
        f"{'a GPU' if gpu else 'the CPU'} in {time.perf_counter() - started:.0f} s"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
