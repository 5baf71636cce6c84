"""Evaluate-stage throughput: the stage's scoring of the test split (every system, both protocols:
generation, H.264 writing, LSE, face-mesh LMD, PSNR/SSIM) in worker processes, one per core
(`evaluate.workers: 0`), against the baseline measured in the same run: the same scoring in one
process with every core's torch threads (what the stage did until session 18). Prints the wall
time of each, the largest difference between their metrics, and the ratio as its last line.

    .venv/bin/python benchmarks/evaluate.py [--clips N]

Run after `make run`: it uses the trained generators and expert in models/ and the store in data/.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--clips", type=int, default=None, help="test clips (and as many cross_audio pairs); default all")
    args = ap.parse_args()

    import numpy as np
    import pandas as pd
    import torch

    from pipeline import config, paths
    from pipeline.evaluate.run import cross_pairs, score_all, systems_for, test_clips
    from pipeline.io.store import Store
    from pipeline.runtime import available_cores

    params = config.validate(config.load(args.params), args.params)
    ds, cfg = params["data"]["dataset"], params["evaluate"]
    store = Store(paths.processed_dir(ds))
    clips = test_clips(params, store)[0]
    if args.clips:
        clips = clips.head(args.clips)
    pairs = cross_pairs(cfg["pairs"], store, clips)
    systems = systems_for(params)
    scorer_args = (cfg["syncnet_v2"], paths.model_dir("sync_expert") / "expert.pt", "cpu", cfg["lse_search"])
    cores = available_cores()
    torch.set_num_threads(cores)
    print(f"{len(clips)} clips, {len(pairs)} cross_audio pairs, systems {list(systems)}, {cores} cores")
    seconds, tables = {}, {}
    for name, workers in (("one process", 1), ("one process per core", min(cores, len(clips) + len(pairs)))):
        with tempfile.TemporaryDirectory() as samples:
            start = time.perf_counter()
            rows, cross = score_all(ds, store, clips, pairs, systems, scorer_args, samples, 0, workers)
            seconds[name] = time.perf_counter() - start
        tables[name] = pd.concat(
            [pd.DataFrame(rows).select_dtypes("number"), pd.DataFrame(cross).select_dtypes("number")]
        )
        print(f"{name} ({workers} process(es)): {seconds[name]:.1f} s")
    a, b = (t.to_numpy(float) for t in tables.values())
    scale = np.maximum(np.abs(a), 1e-9)
    print(f"largest relative difference of a per-clip metric: {np.nanmax(np.abs(a - b) / scale):.2e}")
    print(
        f"evaluate scoring: {seconds['one process'] / seconds['one process per core']:.2f}x one process "
        f"({seconds['one process per core']:.1f} s against {seconds['one process']:.1f} s)"
    )


if __name__ == "__main__":
    main()
