"""The train_generator stage (one per variant): SyncTalkFace's generator against a quality
discriminator, with the frozen sync expert (docs/design.md §5).

One generator step, then one discriminator step (Adam, betas from params). Stability where the
authors' run failed: no GAN term for `gan_warmup` steps, then its weight ramped up over
`gan_ramp` steps (and no expert sync term for `sync_warmup`), discriminator logits (no clamp),
gradient clipping of both networks, D/G balance logged; a non-finite loss stops the run with a
message and leaves the last good checkpoint. Validation every `eval_every` steps on fixed val
samples (audio path only, as at inference): L1, PSNR of the crop and of the mouth region, the
expert's sync loss, a sample grid. Checkpoints (both networks, both optimisers, scalers, step,
RNG) under work/train_generator/<fingerprint>/ every `checkpoint_every` steps, at each
validation, on SIGTERM/SIGUSR1 and at the end, so a killed run continues exactly. Clips that
sync_check excluded are not used.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import paths
from ..data.datasets import GeneratorDataset
from ..errors import PipelineError
from ..io.store import Store
from ..models.generator import Generator
from ..nets.checkpoints import GENERATOR_FORMAT, read
from ..nets.expert import load_expert
from ..nets.generate import final_check, load_generator, package_generator
from ..nets.metrics import mouth, psnr, to_uint8
from ..runtime import atomic_folder, fingerprint, launcher_rank, without_timings, write_json_atomic
from ..stages import StageContext, code_files
from . import gen_report, loop
from .gen_losses import av_sync_loss
from .gen_step import TrainState, build, describe_terms, gan_scale
from .trainer import Trainer, train

log = logging.getLogger("pipeline.generator")
RUN_KEYS = ("max_steps", "processes", "log_every", "amp", "compile", "variants", "checkpoint_every")


def collate(samples: list[dict]) -> dict:
    return {k: torch.stack([s[k] for s in samples]) for k in ("target", "masked", "reference", "mel", "lip")}


def kept_clips(ds: str) -> tuple[set[str], int]:
    """Clip ids that sync_check kept, and how many it excluded."""
    table_path = paths.sync_check_dir(ds) / "offsets.parquet"
    if not table_path.is_file():
        raise PipelineError(f"{table_path} not found: run sync_check first")
    table = pd.read_parquet(table_path)
    return set(table.clip_id[~table.excluded]), int(table.excluded.sum())


def datasets(view: dict) -> tuple[GeneratorDataset, GeneratorDataset, int]:
    ds, cfg = view["data"]["dataset"], view["generator"]
    root = paths.processed_dir(ds)
    if not (root / "index.parquet").is_file():
        raise PipelineError(f"{root / 'index.parquet'} not found: run preprocessing (preprocess, gather) first")
    keep, excluded = kept_clips(ds)
    store = Store(root)
    train = GeneratorDataset(store, ("train",), clip_ids=keep, seed=cfg["seed"], t=cfg["frames"])
    val = GeneratorDataset(store, ("val",), clip_ids=keep, seed=cfg["seed"] + 1, t=cfg["frames"])
    if len(train) == 0 or len(val) == 0:
        raise PipelineError(
            f"no train or no val window of {cfg['frames']} frames in {root} after sync_check's "
            f"exclusions ({excluded} clips excluded)"
        )
    return train, val, excluded


@torch.no_grad()
def validate(model: Generator, expert, batch: dict, rt: loop.Runtime) -> tuple[dict, np.ndarray]:
    """Metrics of the audio path on a fixed val batch, and a sample grid (uint8 image)."""
    model.eval()
    b = {k: v.to(rt.device) for k, v in batch.items()}
    with loop.autocast(rt):
        fake = model(b["masked"], b["reference"], b["mel"])["audio_frames"].float()
        sync = av_sync_loss(expert, fake, b["mel"]).item()
    model.train()
    real_u8, fake_u8 = to_uint8(b["target"]), to_uint8(fake)
    metrics = {
        "val_l1": torch.nn.functional.l1_loss(fake, b["target"]).item(),
        "val_psnr": psnr(fake_u8, real_u8),
        "val_psnr_mouth": psnr(mouth(fake_u8), mouth(real_u8)),
        "val_sync_loss": sync,
    }
    rows = [np.concatenate([real_u8[i, 0], fake_u8[i, 0]], axis=1) for i in range(min(6, len(real_u8)))]
    return metrics, np.concatenate(rows, axis=0)


class GeneratorTrainer(Trainer):
    """One variant's TrainState, its training windows and fixed val batch, and its sample grids."""

    def __init__(self, view: dict, variant: str, rt: loop.Runtime, work: Path, tracker):
        cfg = self.cfg = view["generator"]
        self.name = f"train_generator ({variant})"
        self.rt, self.variant, self.work, self.tracker = rt, variant, work, tracker
        self.train, val, _ = datasets(view)
        self.expert = load_expert(paths.model_dir("sync_expert") / "expert.pt", rt.device)
        loop.seed_everything(cfg["seed"])
        self.ts = TrainState(view, variant, rt, self.expert)
        self.per_rank = max(1, cfg["batch_size"] // rt.world_size)
        n_val = min(cfg["val_samples"], len(val))
        order = np.random.default_rng(val.seed).permutation(len(val))[:n_val]
        self.val_batch = collate([val[int(i)] for i in order])

    def state_dict(self) -> dict:
        return self.ts.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.ts.load_state_dict(state)

    def step(self, step: int) -> dict:
        cfg, rt = self.cfg, self.rt
        idx = loop.batch_indices(cfg["seed"], step, rt.rank, self.per_rank, len(self.train))
        batch = {k: v.to(rt.device) for k, v in collate([self.train[i] for i in idx]).items()}
        use_gan = step >= cfg["gan_warmup"] and cfg["weights"]["gan"] > 0
        self.ts.set_lr(step)

        def non_finite(parts):
            ckpt = self.work / "checkpoint.pt"
            raise PipelineError(
                f"{self.name}: the loss is not finite at step {step} ({describe_terms(parts)}); "
                f"the last good checkpoint (step {_saved_step(ckpt)}) is kept in {self.work}: "
                f"lower generator.lr_g / lr_d or raise generator.grad_clip, then re-run"
            )

        return self.ts.step_on(
            batch, use_gan, non_finite, use_sync=step >= cfg["sync_warmup"], gan_scale=gan_scale(cfg, step)
        )

    def validate(self, step: int, row: dict, rate: float) -> dict:
        metrics, grid = validate(self.ts.g, self.expert, self.val_batch, self.rt)
        if self.rt.is_main:
            grid_path = self.work / "samples" / f"step_{step:06d}.png"
            gen_report.save_grid(grid, grid_path)
            if self.tracker is not None:
                self.tracker.log_artifact(grid_path, "samples")
            log.info(
                "%s step %d: loss %.4f (l1 %.4f, sync %.3f), d %.3f, val l1 %.4f psnr %.2f "
                "(mouth %.2f), val sync %.3f, %.1f samples/s",
                self.variant,
                step,
                row["loss"],
                row["l1"],
                row["av_sync"],
                row["d_loss"],
                metrics["val_l1"],
                metrics["val_psnr"],
                metrics["val_psnr_mouth"],
                metrics["val_sync_loss"],
                rate,
            )
        return metrics


def train_worker(rank: int, world: int, view: dict, variant: str, work: str, tracker) -> None:
    cfg = view["generator"]
    rt = loop.worker_setup(cfg["amp"], rank, world)
    log.info(
        "%s: rank %d of %d DDP process(es) on %s, %s autocast", variant, rt.rank, rt.world_size, rt.device, rt.precision
    )
    if rt.is_main and tracker is not None:
        tracker.set_tags({"precision": rt.precision, "threads": str(rt.threads)})
    train(rt, GeneratorTrainer(view, variant, rt, Path(work), tracker), Path(work), cfg, tracker)


def _saved_step(path: Path) -> str:
    if not path.is_file():
        return "none yet"
    return str(loop.load_checkpoint(path)["step"])


def run(view: dict, ctx: StageContext) -> dict:
    tracker, variant = ctx.tracker, ctx.variant
    cfg = view["generator"]
    if variant not in cfg["variants"]:
        raise PipelineError(f"variant {variant!r} is not in generator.variants {cfg['variants']}")
    ds = view["data"]["dataset"]
    pretrained = (cfg.get("pretrained") or {}).get(variant)
    if pretrained:
        return adopt_pretrained(view, variant, Path(pretrained), tracker)
    expert_path = paths.model_dir("sync_expert") / "expert.pt"
    if not expert_path.is_file():
        raise PipelineError(f"{expert_path} not found: run train_sync_expert first")
    train, val, excluded = datasets(view)  # fail early on a missing store or sync_check table
    expert_cfg = torch.load(expert_path, map_location="cpu", weights_only=False)["config"]
    if expert_cfg["img_size"] != view["preprocess"]["img_size"]:
        raise PipelineError(
            f"the sync expert works on {expert_cfg['img_size']} px crops but preprocess.img_size "
            f"is {view['preprocess']['img_size']}: retrain it (train_sync_expert)"
        )
    expert_audio = expert_cfg.get("audio_width") or expert_cfg.get("width")
    if cfg["audio_init"] == "expert" and expert_audio != cfg["width"]:
        raise PipelineError(
            f"generator.audio_init: expert needs the expert's audio encoder to match the generator's: "
            f"the expert's audio encoder is at width {expert_audio} != generator.width {cfg['width']} "
            f"(set sync_expert.audio_width to generator.width and retrain it, or generator.audio_init: random)"
        )
    log.info(
        "%s: %d train and %d val windows (%d clips excluded by sync_check)", variant, len(train), len(val), excluded
    )
    shards = sorted(paths.processed_shards(ds).glob("shard-*/meta.json"))
    # keys that only say how long or how to run leave the checkpoint valid (raising max_steps
    # continues the run), unless the learning rate decays towards max_steps
    run_keys = RUN_KEYS if cfg["lr_decay_from"] >= cfg["max_steps"] else tuple(k for k in RUN_KEYS if k != "max_steps")
    keyed = {**view, "generator": {k: v for k, v in cfg.items() if k not in run_keys}, "variant": variant}
    inputs = [paths.processed_index(ds), *shards, expert_path, paths.sync_check_dir(ds) / "offsets.parquet"]
    work = paths.work_dir("train_generator", fingerprint(keyed, inputs + code_files("train_generator")))
    work.mkdir(parents=True, exist_ok=True)
    (work / "done.json").unlink(missing_ok=True)
    if tracker is not None:
        tracker.set_tags({"variant": variant, "expert_run": _expert_run(expert_path), "sync_check_excluded": excluded})
    started = time.time()
    loop.run_workers(
        train_worker,
        cfg["processes"],
        view,
        variant,
        str(work),
        tracker,
        threads=loop.resume_threads(work / "checkpoint.pt"),
    )
    if launcher_rank() != 0:  # torchrun/srun started every rank: rank 0 alone writes the outputs
        return {"rank": launcher_rank()}
    state = loop.load_checkpoint(work / "checkpoint.pt")
    expert = load_expert(expert_path)
    g, _ = build(view, variant, expert)
    g.load_state_dict(state["generator"])
    g.eval()
    history = state["history"]
    final = final_check(g, expert, val, cfg)
    metrics = {
        "steps": state["step"],
        "train_seconds": round(time.time() - started, 1),
        "train_windows": len(train),
        "excluded_clips": excluded,
        **{k: v for k, v in history[-1].items() if k.startswith("val_")},
        **final,
    }
    out = paths.model_dir("generator") / variant
    with atomic_folder(out) as tmp:
        torch.save(
            package_generator(g, state["step"], without_timings(metrics), {"variant": variant, "dataset": ds}),
            tmp / "generator.pt",
        )
        grids = sorted((work / "samples").glob("step_*.png"))
        if grids:
            shutil.copy2(grids[-1], tmp / "samples.png")
    gen_report.write_plot(history, paths.plot(f"train_generator_{variant}"))
    write_json_atomic(paths.metrics(f"train_generator_{variant}"), without_timings(metrics))
    if tracker is not None:
        tracker.tag_model(out / "generator.pt")
        tracker.log_artifact(out / "generator.pt", "model")
        tracker.log_artifact(paths.plot(f"train_generator_{variant}"), "plots")
    shutil.rmtree(work, ignore_errors=True)
    return metrics


def adopt_pretrained(view: dict, variant: str, path: Path, tracker) -> dict:
    """generator.pretrained.<variant>: a trained generator of this project used as this variant's
    model instead of training one (an evaluate-only run): checked (format, variant, crop size),
    copied to models/generator/<variant>/, its metrics and an empty curve written."""
    key = f"generator.pretrained.{variant}"
    if not path.is_file():
        raise PipelineError(f"{key}: {path} does not exist")
    state = read(path, GENERATOR_FORMAT, "cpu", f"{key}: not a generator checkpoint of this project")
    load_generator(path)  # the weights fit the network their config describes
    saved = state.get("variant")
    if saved is not None and saved != variant:
        raise PipelineError(f"{key}: {path} holds the {saved!r} variant, not {variant!r}")
    has_memory = state["config"].get("use_memory", True)
    if has_memory != (variant == "memory"):
        raise PipelineError(f"{key}: {path} is a generator {'with' if has_memory else 'without'} the memory")
    size, want = state["config"].get("img_size"), view["preprocess"]["img_size"]
    if size != want:
        raise PipelineError(f"{key}: {path} works on {size} px crops, but preprocess.img_size is {want}")
    out = paths.model_dir("generator") / variant
    with atomic_folder(out) as tmp:
        shutil.copy2(path, tmp / "generator.pt")
    metrics = {"pretrained": str(path), "steps": int(state.get("step", 0)), **state.get("metrics", {})}
    gen_report.write_plot([], paths.plot(f"train_generator_{variant}"))  # nothing was trained here
    write_json_atomic(paths.metrics(f"train_generator_{variant}"), metrics)
    if tracker is not None:
        tracker.set_tags({"variant": variant, "pretrained": str(path)})
        tracker.tag_model(out / "generator.pt")
    log.info("%s: using the trained generator %s (step %s) instead of training", variant, path, metrics["steps"])
    return metrics


def _expert_run(expert_path: Path) -> str:
    """The MLflow run id of the expert this generator uses: the run that wrote that file."""
    from ..tracking import run_of_model

    return run_of_model(expert_path, "train_sync_expert")
