"""The train_sync_expert stage: pretrain the lip-sync expert (or import Wav2Lip's).

Loss: BCE on the cosine of in-sync / off-sync pairs (Wav2Lip) plus an in-batch contrastive term
that gets the network off the 0.69 plateau on every seed (docs/design.md §10), with a linear warm-up.
Validation every `eval_every` steps on a fixed set of val-split pairs: loss and off-sync
detection accuracy, overall and on voiced windows. Keeps the best (lowest val loss) and the last
checkpoint; stops at `max_steps` or after `patience` evaluations without improvement. Resumes
exactly from work/train_sync_expert/<fingerprint>/ after a kill.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from .. import paths
from ..data.datasets import SyncDataset, SyncGroups, augment_groups
from ..errors import PipelineError
from ..io.store import Store
from ..models.syncnet import SyncNet, grouped_sync_losses, sync_probability
from ..nets.checkpoints import EXPERT_FORMAT
from ..nets.expert import import_wav2lip, load_expert, package_expert
from ..runtime import atomic_folder, fingerprint, launcher_rank, without_timings, write_curves_csv, write_json_atomic
from ..stages import StageContext, code_files
from . import loop
from .trainer import Trainer, train

log = logging.getLogger("pipeline.sync_expert")
PLOT_FIELDS = [
    "step",
    "train_loss",
    "train_bce",
    "lr",
    "val_loss",
    "val_acc",
    "val_acc_voiced",
    "val_acc_in_sync",
    "val_acc_off_sync",
    "val_auc",
]
DIAGNOSTICS = ("acc_in_sync", "acc_off_sync", "auc")


def collate(samples):
    faces, mel, label, voiced = zip(*samples)
    return torch.stack(faces), torch.stack(mel), torch.stack(label), torch.stack(voiced)


@torch.no_grad()
def evaluate(
    model, val: SyncDataset | list[SyncDataset], n: int, rt: loop.Runtime, batch: int = 128, prefix: str = "val"
) -> dict:
    """Loss and accuracy on `n` pairs of `val`; given several datasets (the same windows paired
    under other seeds), on `n` pairs of each, pooled."""
    model.eval()
    probs, labels, voiced = [], [], []
    for ds in val if isinstance(val, (list, tuple)) else [val]:
        # a fixed, seeded subset spread over every clip (the pairs are ordered by clip)
        order = np.random.default_rng(ds.seed).permutation(len(ds))[:n]
        for start in range(0, len(order), batch):
            f, m, y, v = collate([ds[int(i)] for i in order[start : start + batch]])
            with loop.autocast(rt):
                a, e = model(m.to(rt.device), f.to(rt.device))
            probs.append(sync_probability(a.float(), e.float()).cpu())
            labels.append(y)
            voiced.append(v)
    model.train()
    p, y, v = torch.cat(probs), torch.cat(labels), torch.cat(voiced)
    correct = ((p > 0.5).float() == y).float()
    loss = torch.nn.functional.binary_cross_entropy(p, y).item()
    pos = y > 0.5
    return {
        f"{prefix}_loss": loss,
        f"{prefix}_acc": correct.mean().item(),
        f"{prefix}_acc_voiced": correct[v].mean().item() if v.any() else float("nan"),
        f"{prefix}_voiced_fraction": v.float().mean().item(),
        # which way it errs (missed in-sync pairs or false alarms on off-sync ones), and how well
        # it ranks them whatever the 0.5 threshold (low AUC: the embeddings do not separate them;
        # high AUC with low accuracy: the cosine is miscalibrated)
        f"{prefix}_acc_in_sync": correct[pos].mean().item() if pos.any() else float("nan"),
        f"{prefix}_acc_off_sync": correct[~pos].mean().item() if (~pos).any() else float("nan"),
        f"{prefix}_auc": roc_auc(p.numpy(), pos.numpy()),
    }


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random
    negative (ties count half), from the Mann-Whitney rank sum. NaN without both classes."""
    from scipy.stats import rankdata

    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


TEST_ROUNDS = 4  # the test split is scored on this many pairings of its windows, pooled


def evaluate_test(view: dict, expert_path: Path) -> dict:
    """Held-out figures of a saved expert on the test split (unseen identities and voices in the
    embedded corpus): the same kind of pairs as validation, `val_samples` of them in each of
    `TEST_ROUNDS` pairings seeded apart (each its own subset of the windows and its own off-sync
    partners), pooled: on a small test split one pairing moved the accuracy by up to 4.6 points.
    Empty when the store has no test windows."""
    cfg = view["sync_expert"]
    store = Store(paths.processed_dir(view["data"]["dataset"]))
    rounds = [
        SyncDataset(
            store,
            ("test",),
            seed=cfg["seed"] + 2 + 1000 * r,
            min_offset=cfg["min_offset"],
            other_clip=cfg["other_clip"],
        )
        for r in range(TEST_ROUNDS)
    ]
    if len(rounds[0]) == 0:
        return {}
    rt = loop.setup(amp=False, rank=0, world_size=1)
    model = load_expert(expert_path, rt.device)
    n = min(cfg["val_samples"], len(rounds[0]))
    out = evaluate(model, rounds, n, rt, prefix="test")
    return {
        "test_acc": out["test_acc"],
        "test_acc_voiced": out["test_acc_voiced"],
        "test_loss": out["test_loss"],
        **{f"test_{k}": out[f"test_{k}"] for k in DIAGNOSTICS},
        "test_samples": n * TEST_ROUNDS,
    }


def learning_rate(cfg: dict, step: int) -> float:
    """Linear warm-up over `warmup_steps`, then constant or a cosine decay to 0 at `max_steps`."""
    warm = max(1, cfg["warmup_steps"])
    if step < warm:
        return cfg["lr"] * (step + 1) / warm
    if cfg["lr_schedule"] == "cosine":
        frac = min(1.0, (step - warm) / max(1, cfg["max_steps"] - warm))
        return cfg["lr"] * 0.5 * (1.0 + math.cos(math.pi * frac))
    return cfg["lr"]


def _datasets(view):
    ds = view["data"]["dataset"]
    cfg = view["sync_expert"]
    root = paths.processed_dir(ds)
    if not (root / "index.parquet").is_file():
        raise PipelineError(f"{root / 'index.parquet'} not found: run preprocessing (preprocess, gather) first")
    store = Store(root)
    train = SyncGroups(store, ("train",), min_offset=cfg["min_offset"], per_clip=cfg["windows_per_clip"])
    val = SyncDataset(store, ("val",), seed=cfg["seed"] + 1, min_offset=cfg["min_offset"], other_clip=cfg["other_clip"])
    if len(train.usable) == 0 or len(val) == 0:
        raise PipelineError(f"the store {root} has no train or no val windows")
    return train, val


class ExpertTrainer(Trainer):
    """The expert, its optimiser, its val set, and the best checkpoint so far (early stopping)."""

    name = "train_sync_expert"

    def __init__(self, view: dict, rt: loop.Runtime, work: Path):
        cfg = self.cfg = view["sync_expert"]
        self.rt, self.work = rt, work
        self.train, self.val = _datasets(view)
        self.n_val = min(cfg["val_samples"], len(self.val))
        loop.seed_everything(cfg["seed"])
        self.model = SyncNet(view["preprocess"]["img_size"], cfg["width"], audio_width=cfg.get("audio_width")).to(
            rt.device
        )
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg["lr"])
        self.best = {"val_loss": float("inf"), "step": -1, "evals_since": 0}
        self.net = torch.nn.parallel.DistributedDataParallel(self.model) if rt.distributed else self.model
        self.per_rank = max(2, cfg["batch_size"] // rt.world_size)

    @property
    def done(self) -> bool:
        return bool(self.best.get("stopped"))

    def state_dict(self) -> dict:
        rt = self.rt
        return {
            "model": self.model.state_dict(),
            "optimiser": self.opt.state_dict(),
            "best": self.best,
            "config": self.model.config(),
            "scaler": rt.scaler.state_dict() if rt.scaler is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimiser"])
        self.best = state["best"]
        if self.rt.scaler is not None and state.get("scaler"):
            self.rt.scaler.load_state_dict(state["scaler"])

    def step(self, step: int) -> dict:
        cfg, rt = self.cfg, self.rt
        lr = learning_rate(cfg, step)
        for g in self.opt.param_groups:
            g["lr"] = lr
        faces, mel, groups = self.train.batch(
            cfg["seed"], step, rt.rank, max(1, self.per_rank // cfg["windows_per_clip"])
        )
        if cfg["augment"]:
            faces, mel = augment_groups(
                faces, mel, groups, np.random.default_rng([cfg["seed"], step, rt.rank, 11]), cfg["mel_warp"]
            )
        faces, mel, groups = faces.to(rt.device), mel.to(rt.device), groups.to(rt.device)
        with loop.autocast(rt):
            a, v = self.net(mel, faces)
        bce, nce = grouped_sync_losses(a, v, groups)
        loss = bce + cfg["contrastive_weight"] * nce
        if not torch.isfinite(loss):
            raise PipelineError(f"sync expert loss is {loss.item()} at step {step}: lower sync_expert.lr")
        loop.backward_step(rt, loss, self.opt)
        return {"train_loss": loop.all_mean(rt, loss.item()), "train_bce": loop.all_mean(rt, bce.item()), "lr": lr}

    def validate(self, step: int, row: dict, rate: float) -> dict:
        cfg, rt = self.cfg, self.rt
        out = evaluate(self.model, self.val, self.n_val, rt)
        if out["val_loss"] < self.best["val_loss"] - 1e-4:
            self.best = {
                "val_loss": out["val_loss"],
                "step": step,
                "evals_since": 0,
                "val_acc": out["val_acc"],
                "val_acc_voiced": out["val_acc_voiced"],
                **{f"val_{k}": out[f"val_{k}"] for k in DIAGNOSTICS},
            }
            if rt.is_main:
                loop.save_checkpoint(self.work / "best.pt", package_expert(self.model, step, {**row, **out}))
        else:
            self.best["evals_since"] += 1
        if rt.is_main:
            log.info(
                "step %d: loss %.4f, val loss %.4f, acc %.3f (voiced %.3f; in sync %.3f, off sync %.3f), "
                "AUC %.3f, %.1f samples/s",
                step,
                row["train_loss"],
                out["val_loss"],
                out["val_acc"],
                out["val_acc_voiced"],
                out["val_acc_in_sync"],
                out["val_acc_off_sync"],
                out["val_auc"],
                rate,
            )
        if self.best["evals_since"] >= cfg["patience"]:
            self.best["stopped"] = True  # a re-run after this point does not train on
            if rt.is_main:
                log.info("validation loss has not improved for %d evaluations: stopping", cfg["patience"])
        return out

    def done_record(self, step: int, history: list[dict]) -> dict:
        loop.save_checkpoint(self.work / "last.pt", package_expert(self.model, step, history[-1] if history else {}))
        return {"best": self.best}


def train_worker(rank: int, world: int, view: dict, work: str, tracker) -> None:
    cfg = view["sync_expert"]
    rt = loop.worker_setup(cfg["amp"], rank, world)
    trainer = ExpertTrainer(view, rt, Path(work))
    if rt.is_main:
        log.info("sync expert: %d DDP process(es) on %s, %s autocast", rt.world_size, rt.device, rt.precision)
        if tracker is not None:
            tracker.set_tags({"precision": rt.precision, "threads": str(rt.threads)})
    train(rt, trainer, Path(work), cfg, tracker)


def run(view: dict, ctx: StageContext) -> dict:
    tracker = ctx.tracker
    cfg = view["sync_expert"]
    out = paths.model_dir("sync_expert")
    if cfg["pretrained"]:
        imported = import_pretrained(cfg["pretrained"], out, view["preprocess"]["img_size"])
        metrics = {**imported, **evaluate_test(view, out / "expert.pt")}  # the test split, where there is one
        _write_plot([], paths.plot("train_sync_expert"))  # no curve: nothing was trained
        write_json_atomic(paths.metrics("train_sync_expert"), {"pretrained": str(cfg["pretrained"]), **metrics})
        if tracker is not None:
            tracker.tag_model(out / "expert.pt")
        return metrics
    train, val = _datasets(view)  # fail early on a missing store
    ds = view["data"]["dataset"]
    shards = sorted(paths.processed_shards(ds).glob("shard-*/meta.json"))  # checksums of the crops
    # keys that only say how long or how to run do not invalidate the checkpoint: raising
    # max_steps continues the run instead of restarting it (unless the lr decays towards it)
    volatile = ("patience", "processes", "log_every", "amp") + (
        ("max_steps",) if cfg["lr_schedule"] == "constant" else ()
    )
    keyed = {**view, "sync_expert": {k: v for k, v in cfg.items() if k not in volatile}}
    fp = fingerprint(keyed, [paths.processed_index(ds), *shards] + code_files("train_sync_expert"))
    work = paths.work_dir("train_sync_expert", fp)
    work.mkdir(parents=True, exist_ok=True)
    (work / "done.json").unlink(missing_ok=True)
    started = time.time()
    loop.run_workers(
        train_worker, cfg["processes"], view, str(work), tracker, threads=loop.resume_threads(work / "checkpoint.pt")
    )
    if launcher_rank() != 0:  # torchrun/srun started every rank: rank 0 alone writes the outputs
        return {"rank": launcher_rank()}
    done = json.loads((work / "done.json").read_text())
    state = loop.load_checkpoint(work / "checkpoint.pt")
    history = state["history"]
    with atomic_folder(out) as tmp:
        shutil.copy2(work / "best.pt", tmp / "expert.pt")
        shutil.copy2(work / "last.pt", tmp / "last.pt")
    _write_plot(history, paths.plot("train_sync_expert"))
    best = done["best"]
    metrics = {
        "steps": done["step"],
        "best_step": best["step"],
        "val_loss": best["val_loss"],
        "val_acc": best["val_acc"],
        "val_acc_voiced": best["val_acc_voiced"],
        **{f"val_{k}": best.get(f"val_{k}", float("nan")) for k in DIAGNOSTICS},
        "train_seconds": round(time.time() - started, 1),
        "train_clips": len(train.clips),
        "val_samples": min(cfg["val_samples"], len(val)),
    }
    metrics.update(evaluate_test(view, out / "expert.pt"))
    write_json_atomic(paths.metrics("train_sync_expert"), without_timings(metrics))
    if tracker is not None:
        tracker.tag_model(out / "expert.pt")
        tracker.log_artifact(out / "expert.pt", "model")
        tracker.log_artifact(paths.plot("train_sync_expert"), "plots")
    shutil.rmtree(work, ignore_errors=True)
    return metrics


def import_pretrained(path: str | Path, out_dir: Path, img_size: int) -> dict:
    """sync_expert.pretrained: an expert of this project (`expert.pt` of an earlier run), or
    Wav2Lip's lipsync_expert.pth, written as this project's checkpoint."""
    if not Path(path).is_file():
        raise PipelineError(f"sync_expert.pretrained: {path} does not exist")
    raw = _project_expert(path)
    if raw is not None:
        model = load_expert(path)
        if model.img_size != img_size:
            raise PipelineError(
                f"sync_expert.pretrained: {path} works on {model.img_size} px crops, "
                f"but preprocess.img_size is {img_size}"
            )
        state = {**raw, "source": raw.get("source") or f"project:{Path(path).name}"}
        with atomic_folder(out_dir) as tmp:
            torch.save(state, tmp / "expert.pt")
            torch.save(state, tmp / "last.pt")
        return {"imported": 1, "parameters": sum(p.numel() for p in model.parameters())}
    if img_size != 96:
        raise PipelineError(f"Wav2Lip's expert works on 96 px crops, but preprocess.img_size is {img_size}")
    model = import_wav2lip(path)
    state = package_expert(model, 0, {}, source=f"wav2lip:{Path(path).name}")
    with atomic_folder(out_dir) as tmp:
        torch.save(state, tmp / "expert.pt")
        torch.save(state, tmp / "last.pt")
    return {"imported": 1, "parameters": sum(p.numel() for p in model.parameters())}


def _project_expert(path: str | Path) -> dict | None:
    """The checkpoint when it is one of this project's experts, else None."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # not a checkpoint at all: Wav2Lip's import names the problem
        return None
    return raw if isinstance(raw, dict) and raw.get("format") == EXPERT_FORMAT else None


def _write_plot(history: list[dict], path: Path) -> None:
    write_curves_csv(history, PLOT_FIELDS, path)
