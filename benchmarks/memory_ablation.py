"""Does the Audio-Lip Memory help, over seeds? Trains both generator variants (memory and
no_memory) on each seed with the same sync expert (the project's models/sync_expert), then runs
`evaluate` on them, and prints per seed and split: mouth L1, LMD (test), the fraction of clips the
expert finds within +-1 frame of sync, LSE-C (test), and the memory's causal-test drop (mouth L1
rise with the readout shuffled, within-1 with it shuffled); then memory vs no_memory per seed; the
last line is the worst seed (goal: memory better on test within-1 and LSE-C on every seed).

Run it from the project after `make run` (it needs the processed store, sync_check's table and
the expert; the params are params.yaml's, with generator.seed replaced):

    .venv/bin/python benchmarks/memory_ablation.py [--seeds 0 1 2] [--set generator.max_steps=600 ...]
    .venv/bin/python benchmarks/memory_ablation.py --with-project   # seed 0 is the project's own run

Each seed trains in a folder of its own under a temporary directory (the project's outputs are
not touched); on 2 cores a seed takes about as long as the default run's two generator stages
plus evaluate.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("mouth_l1", "lmd", "within1", "lse_c", "shuffled_rise", "within1_shuffled")


def project(base: Path, params: dict) -> Path:
    """A project folder sharing the main project's data and expert, with its own params."""
    base.mkdir(parents=True)
    (base / "data").symlink_to(ROOT / "data")
    (base / "models").mkdir()
    (base / "models/sync_expert").symlink_to(ROOT / "models/sync_expert")
    (base / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return base


def stage(folder: Path, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", *args, "--params", "params.yaml"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)} in {folder} failed:\n{proc.stderr[-3000:]}")


def one_seed(base: Path, params: dict, seed: int) -> dict:
    p = json.loads(json.dumps(params))
    p["generator"]["seed"] = seed
    p["generator"]["variants"] = ["memory", "no_memory"]
    folder = project(base / f"seed{seed}", p)
    for variant in ("memory", "no_memory"):
        stage(folder, "train_generator", "--variant", variant)
    stage(folder, "evaluate")
    return results(folder)


def results(folder: Path) -> dict:
    """The per split and variant figures of a project folder whose generators and evaluate ran."""
    ev = json.loads((folder / "metrics/evaluate.json").read_text())
    mem = json.loads((folder / "metrics/memory.json").read_text())
    rows = {}
    for variant in ("memory", "no_memory"):
        tr = json.loads((folder / f"metrics/train_generator_{variant}.json").read_text())
        rows[("val", variant)] = {
            "mouth_l1": tr["final_mouth_l1"],
            "lmd": None,
            "within1": tr["final_sync_within1"],
            "lse_c": None,
            "shuffled_rise": None,
            "within1_shuffled": None,
        }
        per_clip = _test_within1(folder, variant)
        rows[("test", variant)] = {
            "mouth_l1": None,
            "lmd": ev.get(f"{variant}_lmd"),
            "within1": per_clip,
            "lse_c": ev.get(f"{variant}_lse_c"),
            "shuffled_rise": None,
            "within1_shuffled": None,
        }
    for split in ("val", "test"):
        rows[(split, "memory")].update(
            shuffled_rise=mem[f"{split}_mouth_l1_shuffled_rise"],
            within1_shuffled=mem[f"{split}_within1_readout_shuffled"],
        )
        if split == "test":
            rows[(split, "memory")]["mouth_l1"] = mem["test_mouth_l1"]
    return rows


def _test_within1(folder: Path, variant: str) -> float:
    import pandas as pd

    per_clip = pd.read_csv(folder / "reports/eval/per_clip.csv")
    offsets = per_clip[per_clip.system == variant].offset.abs()
    return float((offsets <= 1).mean())


def fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="params overrides, e.g. generator.max_steps=600"
    )
    parser.add_argument(
        "--with-project",
        action="store_true",
        help="take the project's own run (its metrics/, reports/eval/; `make run`) as the seed of its "
        "params.yaml instead of training that seed again (without --set only: the same recipe)",
    )
    args = parser.parse_args()
    if args.with_project and args.set:
        parser.error("--with-project reads the project's run of params.yaml as it is: no --set")
    for need in ("data/processed", "models/sync_expert/expert.pt", "data/sync_check"):
        if not (ROOT / need).exists():
            raise SystemExit(f"{ROOT / need} not found: run `make run` (or the pipeline up to sync_check) first")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for kv in args.set:
        key, value = kv.split("=", 1)
        node = params
        *path, last = key.split(".")
        for k in path:
            node = node[k]
        node[last] = yaml.safe_load(value)
    table = {}
    own_seed = params["generator"]["seed"] if args.with_project else None
    if own_seed is not None:
        for need in ("metrics/memory.json", "metrics/evaluate.json", "reports/eval/per_clip.csv"):
            if not (ROOT / need).is_file():
                raise SystemExit(f"{ROOT / need} not found: --with-project needs the project's run (make run)")
        table[own_seed] = results(ROOT)
        print(f"seed {own_seed}: the project's own run", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        for seed in args.seeds:
            if seed == own_seed:
                continue
            table[seed] = one_seed(Path(tmp), params, seed)
            print(f"seed {seed} done", flush=True)
    table = dict(sorted(table.items()))
    print("seed  split  variant    " + "  ".join(f"{c:>16s}" for c in COLUMNS))
    for seed, rows in table.items():
        for (split, variant), r in rows.items():
            print(f"{seed:4d}  {split:5s}  {variant:9s}  " + "  ".join(f"{fmt(r[c]):>16s}" for c in COLUMNS))
    print("memory vs no_memory on test (difference memory - no_memory; better: within1 and lse_c higher):")
    worst = None
    for seed, rows in table.items():
        m, n = rows[("test", "memory")], rows[("test", "no_memory")]
        d_w, d_c = m["within1"] - n["within1"], (m["lse_c"] or 0) - (n["lse_c"] or 0)
        better = d_w > 0 and d_c > 0
        print(
            f"  seed {seed}: within1 {m['within1']:.3f} vs {n['within1']:.3f} ({d_w:+.3f}), "
            f"LSE-C {fmt(m['lse_c'])} vs {fmt(n['lse_c'])} ({d_c:+.4f}): {'memory better' if better else 'not better'}"
        )
        score = min(d_w, d_c)
        if worst is None or score < worst[1]:
            worst = (seed, score, d_w, d_c, better)
    seed, _, d_w, d_c, better = worst
    print(
        f"worst seed {seed}: within1 {d_w:+.3f}, LSE-C {d_c:+.4f} (memory - no_memory): "
        f"{'memory better on every seed' if better else 'memory NOT better on every seed'}"
    )


if __name__ == "__main__":
    main()
