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

import json
import logging
import math
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import paths
from ..data.datasets import GeneratorDataset
from ..errors import PipelineError
from ..evaluate import generate as gen
from ..evaluate.metrics import mouth, psnr, to_uint8
from ..io.store import Store
from ..models.discriminator import QualityDiscriminator, d_loss
from ..models.generator import ExpertLipEncoder, Generator
from ..runtime import fingerprint, launcher_rank, without_timings, write_json_atomic
from . import expert_io, gen_report, loop
from .gen_losses import FrozenCopy, av_sync_loss, generator_losses

log = logging.getLogger("pipeline.generator")
RUN_KEYS = ("max_steps", "gpus", "log_every", "amp", "compile", "variants", "checkpoint_every")


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


def build(view: dict, variant: str, expert: torch.nn.Module | None = None) -> tuple[Generator, QualityDiscriminator]:
    """The generator and discriminator of `variant`; with `generator.lip_encoder: expert` the
    memory variant's lip encoder is `expert`'s face encoder (its weights copied)."""
    cfg = view["generator"]
    lip = None
    if variant == "memory" and cfg.get("lip_encoder", "own") == "expert":
        if expert is None:
            raise PipelineError("generator.lip_encoder: expert needs the sync expert to build the generator")
        ec = expert.config()
        lip = {"kind": "expert", "width": ec["width"], "input_channels": ec["input_channels"]}
    g = Generator(
        view["preprocess"]["img_size"],
        cfg["width"],
        use_memory=variant == "memory",
        slots=cfg["slots"],
        dropout=cfg["dropout"],
        address_scale=cfg["address_scale"],
        output=cfg["output"],
        base_mouth=cfg["base_mouth"],
        query_norm=cfg.get("query_norm", "none"),
        audio_drop=cfg.get("audio_drop", 0.0),
        lip_encoder=lip,
        fusion=cfg.get("fusion", "relu"),
    )
    if lip is not None:
        if expert.img_size != g.img_size:
            raise PipelineError(
                f"generator.lip_encoder: expert needs an expert of the generator's image size "
                f"({g.img_size} px), got {expert.img_size} px"
            )
        g.lip.face_encoder.load_state_dict(expert.face_encoder.state_dict())
    return g, QualityDiscriminator(cfg["width"])


def generator_groups(g: Generator, lr: float, memory_lr_scale: float) -> list[dict]:
    """The generator's optimiser groups: the memory's key and value rows at `memory_lr_scale`
    times the learning rate (each row learns only from the frames that address it, a few per
    batch), everything else at the learning rate."""
    if g.memory is None or memory_lr_scale == 1.0:
        return [{"params": list(g.parameters())}]
    rows = [g.memory.key, g.memory.value]
    ids = {id(p) for p in rows}
    return [
        {"params": [p for p in g.parameters() if id(p) not in ids]},
        {"params": rows, "lr": lr * memory_lr_scale, "lr_scale": memory_lr_scale},
    ]


def init_audio_from_expert(g: Generator, expert: torch.nn.Module) -> None:
    """Start the generator's audio encoder from the sync expert's (`generator.audio_init: expert`).

    Both are Wav2Lip's audio CNN; at equal width their parameters match name for name, so the
    generator starts from audio features already trained to predict the mouth (they are then
    trained on). The paper starts from random weights (`audio_init: random`)."""
    theirs = expert.audio_encoder.state_dict()
    ours = g.audio.state_dict()
    bad = [k for k in ours if k not in theirs or theirs[k].shape != ours[k].shape]
    if bad or len(theirs) != len(ours):
        raise PipelineError(
            f"generator.audio_init: expert needs the expert's audio encoder to match the generator's "
            f"(same width: sync_expert.audio_width, or its width when that is null, "
            f"== generator.width); {len(bad)} of {len(ours)} tensors differ, e.g. {bad[:3]}"
        )
    g.audio.load_state_dict({k: v.detach().clone() for k, v in theirs.items()})


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


def lr_factor(cfg: dict, step: int) -> float:
    """Both networks' learning-rate multiplier at `step`: 1 until `lr_decay_from`, then a cosine
    decay to 0 at `max_steps` (lr_decay_from >= max_steps: constant)."""
    start, end = cfg["lr_decay_from"], cfg["max_steps"]
    if step < start or start >= end:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - start) / (end - start))))


class TrainState:
    """Both networks, their optimisers and scalers, and one training step (G, then D)."""

    def __init__(self, view: dict, variant: str, rt: loop.Runtime, expert: torch.nn.Module):
        cfg = self.cfg = view["generator"]
        self.rt, self.variant, self.expert = rt, variant, expert
        g, d = build(view, variant, expert)
        if cfg["audio_init"] == "expert":
            init_audio_from_expert(g, expert)
        self.g, self.d = g.to(rt.device), d.to(rt.device)
        self.opt_g = torch.optim.Adam(
            generator_groups(g, cfg["lr_g"], cfg.get("memory_lr_scale", 1.0)), lr=cfg["lr_g"], betas=tuple(cfg["betas"])
        )
        self.opt_d = torch.optim.Adam(d.parameters(), lr=cfg["lr_d"], betas=tuple(cfg["betas"]))
        self.d_scaler = torch.amp.GradScaler("cuda") if rt.scaler is not None else None
        self.net_g = torch.compile(self.g) if cfg["compile"] and rt.device.type == "cuda" else self.g
        self.net_d = self.d
        if rt.distributed:
            self.net_g = torch.nn.parallel.DistributedDataParallel(self.net_g)
            self.net_d = torch.nn.parallel.DistributedDataParallel(self.d)
        self.lip_copy = FrozenCopy(self.g.lip) if self.g.lip is not None and cfg["weights"]["vv_sync"] > 0 else None

    def state_dict(self) -> dict:
        rt = self.rt
        return {
            "generator": self.g.state_dict(),
            "discriminator": self.d.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "config": self.g.config(),
            "variant": self.variant,
            "scalers": [rt.scaler.state_dict(), self.d_scaler.state_dict()] if rt.scaler is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.g.load_state_dict(state["generator"])
        self.d.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        if self.rt.scaler is not None and state.get("scalers"):
            self.rt.scaler.load_state_dict(state["scalers"][0])
            self.d_scaler.load_state_dict(state["scalers"][1])

    def set_lr(self, step: int) -> None:
        f = lr_factor(self.cfg, step)
        for opt, base in ((self.opt_g, self.cfg["lr_g"]), (self.opt_d, self.cfg["lr_d"])):
            for group in opt.param_groups:
                group["lr"] = base * f * group.get("lr_scale", 1.0)

    def step_on(
        self, batch: dict, use_gan: bool, on_non_finite=None, use_sync: bool = True, gan_scale: float = 1.0
    ) -> dict:
        """One G step then one D step; returns every loss term and the D/G balance (floats).
        `gan_scale` multiplies the GAN term's weight (its ramp). `on_non_finite(parts)` is called
        (on every rank) before any update when the loss is not finite; it is expected to raise."""
        cfg, rt, g, d = self.cfg, self.rt, self.g, self.d
        weights = {**cfg["weights"], "gan": cfg["weights"]["gan"] * gan_scale}
        for p in d.parameters():  # the G step must not touch D
            p.requires_grad_(False)
        with loop.autocast(rt):
            out = self.net_g(
                batch["masked"],
                batch["reference"],
                batch["mel"],
                batch["lip"] if g.use_memory else None,
                cfg["lip_path"],
            )
            total, parts = generator_losses(
                out,
                batch,
                weights,
                self.expert,
                self.lip_copy,
                d,
                use_gan,
                use_sync,
                cfg.get("lip_decode_losses", "l1") == "all",
                expert_vv=isinstance(g.lip, ExpertLipEncoder),
            )
        if loop.any_rank(rt, not bool(torch.isfinite(total))):  # every rank stops together
            for p in d.parameters():
                p.requires_grad_(True)
            if on_non_finite is not None:
                on_non_finite(parts)
            raise PipelineError(f"the generator loss is not finite: {_terms(parts)}")
        g_norm = loop.backward_step(rt, total, self.opt_g, g.parameters(), cfg["grad_clip"] or None)
        for p in d.parameters():
            p.requires_grad_(True)
        fake = out["audio_frames"].detach()
        with loop.autocast(rt):
            real_logits = self.net_d(batch["target"].reshape(-1, *fake.shape[2:]))
            fake_logits = self.net_d(fake.reshape(-1, *fake.shape[2:]))
            loss_d = d_loss(real_logits, fake_logits)
        loop.backward_step(rt, loss_d, self.opt_d, d.parameters(), cfg["grad_clip"] or None, scaler=self.d_scaler)
        row = {
            "loss": total.item(),
            "d_loss": loss_d.item(),
            "g_grad_norm": g_norm,
            "d_real": torch.sigmoid(real_logits.float()).mean().item(),
            "d_fake": torch.sigmoid(fake_logits.float()).mean().item(),
            **{k: v.item() for k, v in parts.items()},
        }
        return {k: loop.all_mean(rt, v) for k, v in row.items()}


def gan_scale(cfg: dict, step: int) -> float:
    """The GAN weight's factor at `step`: 0 during `gan_warmup`, then rising linearly to 1 over
    `gan_ramp` steps. The discriminator trains from the first step, so by the end of the warm-up it
    tells real from generated with near certainty; its full weight at once pulled the generator
    off its L1 course (docs/method.md, "The generator's recipe on a CPU")."""
    if step < cfg["gan_warmup"]:
        return 0.0
    return min(1.0, (step - cfg["gan_warmup"] + 1) / cfg["gan_ramp"]) if cfg["gan_ramp"] > 0 else 1.0


def _terms(parts: dict) -> str:
    return ", ".join(f"{k} {v.item():.4g}" for k, v in parts.items())


def train_worker(rank: int, world: int, view: dict, variant: str, work: str, tracker) -> None:
    cfg = view["generator"]
    rt = loop.worker_setup(cfg["amp"], rank, world)
    log.info(
        "%s: rank %d of %d DDP process(es) on %s, %s autocast", variant, rt.rank, rt.world_size, rt.device, rt.precision
    )
    if rt.is_main and tracker is not None:
        tracker.set_tags({"precision": rt.precision, "threads": str(rt.threads)})
    work = Path(work)
    ckpt_path = work / "checkpoint.pt"
    train, val, _ = datasets(view)
    expert = expert_io.load_expert(paths.model_dir("sync_expert") / "expert.pt", rt.device)
    loop.seed_everything(cfg["seed"])
    ts = TrainState(view, variant, rt, expert)
    g = ts.g
    step, history = 0, []
    if ckpt_path.is_file():
        state = loop.load_checkpoint(ckpt_path, rt.device)
        ts.load_state_dict(state)
        step, history = state["step"], state["history"]
        loop.set_rng_state(state["rng"])
        if rt.is_main:
            log.info("resuming %s from %s at step %d", variant, ckpt_path, step)
            loop.check_resume(rt, state.get("numerics"), f"train_generator ({variant})")
    per_rank = max(1, cfg["batch_size"] // rt.world_size)
    n_val = min(cfg["val_samples"], len(val))
    val_batch = collate([val[int(i)] for i in np.random.default_rng(val.seed).permutation(len(val))[:n_val]])
    stop = loop.StopRequest()

    def checkpoint():
        if rt.is_main:
            loop.save_checkpoint(
                ckpt_path,
                {
                    **ts.state_dict(),
                    "step": step,
                    "history": history,
                    "rng": loop.rng_state(),
                    "numerics": loop.numerics(rt),
                },
            )

    def non_finite(parts):
        raise PipelineError(
            f"train_generator ({variant}): the loss is not finite at step {step} ({_terms(parts)}); "
            f"the last good checkpoint (step {_saved_step(ckpt_path)}) is kept in {work}: "
            f"lower generator.lr_g / lr_d or raise generator.grad_clip, then re-run"
        )

    started, first_step = time.time(), step
    try:
        while step < cfg["max_steps"]:
            if loop.any_rank(rt, bool(stop)):
                checkpoint()
                raise loop.Preempted(stop.signal or signal.SIGTERM, step)
            idx = loop.batch_indices(cfg["seed"], step, rt.rank, per_rank, len(train))
            batch = {k: v.to(rt.device) for k, v in collate([train[i] for i in idx]).items()}
            use_gan = step >= cfg["gan_warmup"] and cfg["weights"]["gan"] > 0
            ts.set_lr(step)
            row = ts.step_on(
                batch, use_gan, non_finite, use_sync=step >= cfg["sync_warmup"], gan_scale=gan_scale(cfg, step)
            )
            step += 1
            row = {"step": step, **row}
            if step % cfg["eval_every"] == 0 or step == cfg["max_steps"]:
                metrics, grid = validate(g, expert, val_batch, rt)
                row.update(metrics)
                if rt.is_main:
                    gen_report.save_grid(grid, work / "samples" / f"step_{step:06d}.png")
                    if tracker is not None:
                        tracker.log_artifact(work / "samples" / f"step_{step:06d}.png", "samples")
                    rate = (step - first_step) * cfg["batch_size"] / max(1e-9, time.time() - started)
                    log.info(
                        "%s step %d: loss %.4f (l1 %.4f, sync %.3f), d %.3f, val l1 %.4f psnr %.2f "
                        "(mouth %.2f), val sync %.3f, %.1f samples/s",
                        variant,
                        step,
                        row["loss"],
                        row["l1"],
                        row["av_sync"],
                        row["d_loss"],
                        row["val_l1"],
                        row["val_psnr"],
                        row["val_psnr_mouth"],
                        row["val_sync_loss"],
                        rate,
                    )
            history.append(row)
            if rt.is_main and tracker is not None and (step % cfg["log_every"] == 0 or "val_l1" in row):
                tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, step=step)
            if "val_l1" in row or step % cfg["checkpoint_every"] == 0:
                checkpoint()
        checkpoint()
        if rt.is_main:
            (work / "done.json").write_text(json.dumps({"step": step}))
    finally:
        stop.restore()
        loop.teardown(rt)


def _saved_step(path: Path) -> str:
    if not path.is_file():
        return "none yet"
    return str(loop.load_checkpoint(path)["step"])


def run(view: dict, tracker=None, variant: str = "memory") -> dict:
    cfg = view["generator"]
    if variant not in cfg["variants"]:
        raise PipelineError(f"variant {variant!r} is not in generator.variants {cfg['variants']}")
    ds = view["data"]["dataset"]
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
    if cfg["audio_init"] == "expert" and expert_cfg.get("width") != cfg["width"]:
        raise PipelineError(
            f"generator.audio_init: expert needs the expert's audio encoder to match the generator's: "
            f"sync_expert width {expert_cfg.get('width')} != generator.width {cfg['width']} "
            f"(set them equal, or generator.audio_init: random)"
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
    work = paths.work_dir("train_generator", fingerprint(keyed, inputs + _code_files()))
    work.mkdir(parents=True, exist_ok=True)
    (work / "done.json").unlink(missing_ok=True)
    if tracker is not None:
        tracker.set_tags({"variant": variant, "expert_run": _expert_run(expert_path), "sync_check_excluded": excluded})
    started = time.time()
    loop.run_workers(
        train_worker,
        max(1, cfg["gpus"]),
        view,
        variant,
        str(work),
        tracker,
        threads=loop.resume_threads(work / "checkpoint.pt"),
    )
    if launcher_rank() != 0:  # torchrun/srun started every rank: rank 0 alone writes the outputs
        return {"rank": launcher_rank()}
    state = loop.load_checkpoint(work / "checkpoint.pt")
    expert = expert_io.load_expert(expert_path)
    g, _ = build(view, variant, expert)
    g.load_state_dict(state["generator"])
    g.eval()
    history = state["history"]
    final = gen_report.final_check(g, expert, val, cfg)
    metrics = {
        "steps": state["step"],
        "train_seconds": round(time.time() - started, 1),
        "train_windows": len(train),
        "excluded_clips": excluded,
        **{k: v for k, v in history[-1].items() if k.startswith("val_")},
        **final,
    }
    out = paths.model_dir("generator") / variant
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(
        gen.package(g, state["step"], without_timings(metrics), {"variant": variant, "dataset": ds}),
        tmp / "generator.pt",
    )
    grids = sorted((work / "samples").glob("step_*.png"))
    if grids:
        shutil.copy2(grids[-1], tmp / "samples.png")
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    gen_report.write_plot(history, paths.plot(f"train_generator_{variant}"))
    write_json_atomic(paths.metrics(f"train_generator_{variant}"), without_timings(metrics))
    if tracker is not None:
        tracker.tag_model(out / "generator.pt")
        tracker.log_artifact(out / "generator.pt", "model")
        tracker.log_artifact(paths.plot(f"train_generator_{variant}"), "plots")
    shutil.rmtree(work, ignore_errors=True)
    return metrics


def _expert_run(expert_path: Path) -> str:
    """The MLflow run id of the expert this generator uses: the run that wrote that file."""
    from ..tracking import run_of_model

    return run_of_model(expert_path, "train_sync_expert")


def _code_files() -> list[Path]:
    from ..stages import STAGES

    root = Path(__file__).resolve().parents[2]
    return [root / f for f in STAGES["train_generator"].code if (root / f).is_file()]
