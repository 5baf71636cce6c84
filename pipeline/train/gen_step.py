"""The generator's training state: both networks (memory or no_memory variant), their optimisers
and learning-rate schedule, and one training step (a generator step, then a discriminator step).
The stage around it: pipeline/train/generator.py.
"""

from __future__ import annotations

import math

import torch

from ..errors import PipelineError
from ..models.discriminator import QualityDiscriminator, d_loss
from ..models.generator import ExpertLipEncoder, Generator
from . import loop
from .gen_losses import FrozenCopy, generator_losses


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
            raise PipelineError(f"the generator loss is not finite: {describe_terms(parts)}")
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


def describe_terms(parts: dict) -> str:
    return ", ".join(f"{k} {v.item():.4g}" for k, v in parts.items())
