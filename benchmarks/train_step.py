"""Generator training throughput: samples/s of the full training step (generator forward, every
loss with the frozen expert and the frozen lip-encoder copy, G step, D step) on the device it
finds, at the default size (params.yaml: 96 px, width 0.25) and at the paper's (128 px, batch 40,
width 1.0). Each configuration runs in its own process so that its peak memory is its own.
The baseline, measured in the same run, is the same step of the `no_memory` variant (Wav2Lip's
shape): a line gives the memory variant's cost relative to it. A second baseline is the memory
variant's step at the default size with the convolution weights in the standard (NCHW) layout:
a line gives the speed of the networks' channels-last layout (models/layout.py) relative to it.
A third, where the device computes in bf16 (a GPU, or a CPU with AVX512-BF16/AMX), is the memory
variant's default-size step with `amp` off (fp32): the last line is autocast's speed against it.

    .venv/bin/python benchmarks/train_step.py [--steps 5] [--paper-steps 2] [--skip-paper]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(
    size: int,
    width: float,
    batch: int,
    frames: int,
    variant: str,
    steps: int,
    layout: str = "channels_last",
    amp: bool = True,
) -> dict:
    import resource

    import torch

    from pipeline import config
    from pipeline.models.syncnet import SyncNet
    from pipeline.runtime import available_cores
    from pipeline.train import gen_step, loop

    torch.set_num_threads(available_cores())
    cfg = {
        **config.load(ROOT / "params.yaml")["generator"],
        "width": width,
        "batch_size": batch,
        "frames": frames,
        "gan_warmup": 0,
    }
    view = {"data": {"dataset": "embedded"}, "preprocess": {"img_size": size}, "generator": cfg}
    rt = loop.setup(amp=cfg["amp"] and amp)
    expert = SyncNet(size, 0.25).to(rt.device).eval()
    for p in expert.parameters():
        p.requires_grad_(False)
    state = gen_step.TrainState(view, variant, rt, expert)
    if layout == "nchw":  # undo models/layout.py: every network's convolution weights back to NCHW
        nets = [state.g, state.d, expert] + ([state.lip_copy.copy] if state.lip_copy is not None else [])
        for p in (p for net in nets for p in net.parameters()):
            p.data = p.data.contiguous()
    g = torch.Generator().manual_seed(0)
    r = lambda *s: (torch.rand(*s, generator=g) * 2 - 1).to(rt.device)
    batch = {
        "target": r(batch, frames, 3, size, size),
        "masked": r(batch, frames, 3, size, size),
        "reference": r(batch, frames, 3, size, size),
        "mel": r(batch, frames, 1, 80, 16) * 4,
        "lip": r(batch, frames, 3, 5, size, size),
    }
    state.step_on(batch, use_gan=True)  # warm-up step excluded
    if rt.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        state.step_on(batch, use_gan=True)
    if rt.device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS, MiB
    seconds = time.perf_counter() - start
    return {
        "device": rt.device_name,
        "precision": rt.precision,
        "samples_per_s": steps * cfg["batch_size"] / seconds,
        "frames_per_s": steps * cfg["batch_size"] * frames / seconds,
        "peak_mib": peak,
        "params_g": sum(p.numel() for p in state.g.parameters()),
    }


def run_child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--paper-steps", type=int, default=2)
    ap.add_argument("--skip-paper", action="store_true")
    ap.add_argument(
        "--child", nargs=8, metavar=("SIZE", "WIDTH", "BATCH", "FRAMES", "VARIANT", "STEPS", "LAYOUT", "AMP")
    )
    a = ap.parse_args()
    if a.child:
        s, w, b, t, v, n, layout, amp = a.child
        print(json.dumps(measure(int(s), float(w), int(b), int(t), v, int(n), layout, amp == "amp")))
        return
    from pipeline import config

    cfg = config.load(ROOT / "params.yaml")
    size, width, batch, frames = (
        cfg["preprocess"]["img_size"],
        cfg["generator"]["width"],
        cfg["generator"]["batch_size"],
        cfg["generator"]["frames"],
    )
    configs = [("default", size, width, batch, frames, a.steps)]
    amp_ratio = None
    if not a.skip_paper:
        configs.append(("paper", 128, 1.0, 40, 5, a.paper_steps))
    ratios = []
    for name, s, w, b, t, n in configs:
        res = {
            v: run_child([str(s), str(w), str(b), str(t), v, str(n), "channels_last", "amp"])
            for v in ("memory", "no_memory")
        }
        for v, r in res.items():
            print(
                f"{name:8s} {s}px width {w} batch {b} T {t} {v:9s} on {r['device']} ({r['precision']}): "
                f"{r['samples_per_s']:.2f} "
                f"samples/s ({r['frames_per_s']:.1f} frames/s), peak {r['peak_mib']:.0f} MiB, "
                f"{r['params_g'] / 1e6:.1f} M generator parameters"
            )
        ratios.append((name, res["memory"]["samples_per_s"] / res["no_memory"]["samples_per_s"]))
        if name == "default":
            nchw = run_child([str(s), str(w), str(b), str(t), "memory", str(n), "nchw", "amp"])
            print(
                f"{name:8s} {s}px width {w} batch {b} T {t} memory    NCHW weights: {nchw['samples_per_s']:.2f} "
                f"samples/s, peak {nchw['peak_mib']:.0f} MiB"
            )
            layout_ratio = res["memory"]["samples_per_s"] / nchw["samples_per_s"]
            if res["memory"]["precision"] != "fp32":
                fp32 = run_child([str(s), str(w), str(b), str(t), "memory", str(n), "channels_last", "fp32"])
                print(
                    f"{name:8s} {s}px width {w} batch {b} T {t} memory    fp32 (amp off): "
                    f"{fp32['samples_per_s']:.2f} samples/s, peak {fp32['peak_mib']:.0f} MiB"
                )
                amp_ratio = (res["memory"]["precision"], res["memory"]["samples_per_s"] / fp32["samples_per_s"])
    print("memory variant speed relative to the no_memory baseline: " + ", ".join(f"{n} {r:.2f}x" for n, r in ratios))
    print(f"channels-last layout speed relative to NCHW (default size, memory variant): {layout_ratio:.2f}x")
    if amp_ratio:
        print(f"{amp_ratio[0]} autocast speed relative to fp32 (default size, memory variant): {amp_ratio[1]:.2f}x")
    else:
        print("no bf16/fp16 on this device: the training steps ran in fp32 (no autocast ratio)")


if __name__ == "__main__":
    main()
