"""Sync-expert recipe on every seed: trains the expert with the current params (params.yaml) on N
seeds, and a baseline in the same run on the same seeds: Wav2Lip's plain setting (BCE only,
no augmentation, lr 1e-4 constant; the rest as the recipe: network, batch, steps, clips).
Prints per seed the best validation off-sync accuracy (overall and on voiced windows), the
held-out test-identity accuracy of that checkpoint, the steps and the wall time; then the worst
seed of each, and the ratio of the worst recipe accuracy to the worst baseline accuracy
(goal: recipe worst voiced val accuracy >= 0.90 within ~5 minutes per seed on 2 cores).

    .venv/bin/python benchmarks/sync_expert.py [--seeds 0 1 2] [--steps N] [--no-baseline]
                                               [--set sync_expert.lr=1e-3 ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from pipeline import config  # noqa: E402
from pipeline.train import sync_expert  # noqa: E402

BASELINE = {"contrastive_weight": 0.0, "augment": False, "lr": 1.0e-4, "lr_schedule": "constant"}


def train_one(view: dict, seed: int, keep: str | None = None) -> dict:
    view = {**view, "sync_expert": {**view["sync_expert"], "seed": seed}}
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as work:
        start = time.perf_counter()
        sync_expert.train_worker(0, 1, view, work, None)
        seconds = time.perf_counter() - start
        done = json.loads((Path(work) / "done.json").read_text())
        test = sync_expert.evaluate_test(view, Path(work) / "best.pt")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(work) / "best.pt", Path(keep) / f"expert-seed{seed}.pt")
    best = done["best"]
    return {
        "seed": seed,
        "val_acc": best["val_acc"],
        "val_acc_voiced": best["val_acc_voiced"],
        "test_acc": test.get("test_acc", float("nan")),
        "test_acc_voiced": test.get("test_acc_voiced", float("nan")),
        "val_auc": best.get("val_auc", float("nan")),
        "test_auc": test.get("test_auc", float("nan")),
        "best_step": best["step"],
        "steps": done["step"],
        "seconds": seconds,
    }


def _value(text: str):
    try:
        return float(text) if "e" in text.lower() and not text.isalpha() else yaml.safe_load(text)
    except ValueError:
        return yaml.safe_load(text)


def report(name: str, rows: list[dict]) -> dict:
    print(f"{name}:")
    print("  seed  val_acc  val_voiced  val_auc  test_acc  test_voiced  test_auc  best_step  steps  seconds")
    for r in rows:
        print(
            f"  {r['seed']:>4}  {r['val_acc']:7.3f}  {r['val_acc_voiced']:10.3f}  {r['val_auc']:7.3f}  "
            f"{r['test_acc']:8.3f}  {r['test_acc_voiced']:11.3f}  {r['test_auc']:8.3f}  {r['best_step']:>9}  "
            f"{r['steps']:>5}  {r['seconds']:7.1f}"
        )
    worst = {k: min(r[k] for r in rows) for k in ("val_acc", "val_acc_voiced", "test_acc", "test_acc_voiced")}
    worst["seconds"] = max(r["seconds"] for r in rows)
    print(
        f"  worst: val_acc {worst['val_acc']:.3f}, val_acc_voiced {worst['val_acc_voiced']:.3f}, "
        f"test_acc {worst['test_acc']:.3f}, test_acc_voiced {worst['test_acc_voiced']:.3f}, "
        f"slowest {worst['seconds']:.1f} s"
    )
    return worst


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="max_steps (default: the params')")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a sync_expert param of the recipe, e.g. sync_expert.lr=1e-3",
    )
    ap.add_argument("--keep", metavar="DIR", help="copy each seed's best checkpoint to DIR")
    ap.add_argument("--no-baseline", action="store_true", help="train the recipe only (no ratio)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    params = config.load(args.params)
    for item in args.set:
        key, value = item.split("=", 1)
        node = params
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = _value(value)
    if args.steps:
        params["sync_expert"]["max_steps"] = args.steps
    params = config.validate(params, "benchmark overrides")
    view = {k: params[k] for k in ("data", "preprocess", "sync_expert")}
    print("recipe:", {k: v for k, v in view["sync_expert"].items() if k not in ("pretrained", "seed")})
    ours = report("recipe", [train_one(view, s, args.keep) for s in args.seeds])
    if args.no_baseline:
        return
    base_view = {**view, "sync_expert": {**view["sync_expert"], **BASELINE}}
    base = report(f"baseline (Wav2Lip plain: {BASELINE})", [train_one(base_view, s) for s in args.seeds])
    print(
        f"worst-seed val accuracy (voiced) {ours['val_acc_voiced']:.3f} vs baseline {base['val_acc_voiced']:.3f}: "
        f"{ours['val_acc_voiced'] / max(base['val_acc_voiced'], 1e-9):.2f}x"
    )


if __name__ == "__main__":
    main()
