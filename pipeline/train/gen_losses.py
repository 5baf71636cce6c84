"""The generator's losses (docs/design.md §5) and where their gradients may go.

total = w_l1 * (L1 of the audio-path decode + L1 of the lip-path decode)
        + w_store * store + w_align * align            (memory variant: models/memory.py)
        + w_recall * recall                             (memory variant, when w_recall > 0)
        + w_av * audio-visual sync   (the frozen expert, eval mode, on the lower half of every
                                      5-frame window of generated frames, with that window's mel)
        + w_vv * visual-visual sync  (L1 between lip-encoder embeddings of real and generated lip
                                      windows, computed by a frozen copy of the lip encoder that is
                                      refreshed from the live one every step: the loss trains the
                                      generator, never the encoder)
        + w_gan * adversarial         (after `gan_warmup` steps, ramped over `gan_ramp`; logits)

The audio-visual sync term joins after `sync_warmup` steps (it is still computed, without
gradient, for the curves). From the first step, the expert's gradient on a face whose mouth the
generator cannot yet draw from the audio is an adversarial colour pattern on the lips, not a
mouth shape (seen in the sample grids). Wav2Lip likewise switched its sync term on late, once its
generator's sync loss was low.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from ..models import memory as mem
from ..models.discriminator import g_adversarial
from ..models.syncnet import sync_bce

WINDOW = 5


def expert_windows(frames: torch.Tensor, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """frames [B, T, 3, S, S] in [-1, 1], mel [B, T, 1, 80, 16] -> the expert's inputs for every
    5-frame window (centre c = 2 .. T-3): faces [N, 15, S/2, S] in [0, 1], mel [N, 1, 80, 16]."""
    b, t, _, s, _ = frames.shape
    if t < WINDOW:
        raise ValueError(f"sync losses need T >= {WINDOW} frames, got {t}")
    lower = (frames[:, :, :, s // 2 :] + 1.0) / 2.0
    faces = torch.stack([lower[:, c - 2 : c + 3].reshape(b, -1, s // 2, s) for c in range(2, t - 2)], 1)
    mels = mel[:, 2 : t - 2]
    return faces.reshape(-1, *faces.shape[2:]), mels.reshape(-1, *mels.shape[2:])


def lip_windows(frames: torch.Tensor) -> torch.Tensor:
    """frames [B, T, 3, S, S] -> the lip encoder's inputs [N, 3, 5, S, S] (upper half zeroed) for
    every 5-frame window, in the order of expert_windows."""
    b, t, c, s, _ = frames.shape
    wins = torch.stack([frames[:, k - 2 : k + 3] for k in range(2, t - 2)], 1)  # [B, W, 5, 3, S, S]
    wins = wins.reshape(-1, WINDOW, c, s, s).transpose(1, 2)
    mask = torch.ones_like(wins[:1])
    mask[..., : s // 2, :] = 0.0
    return wins * mask


def av_sync_loss(expert: nn.Module, frames: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
    faces, mels = expert_windows(frames, mel)
    a, v = expert(mels, faces)
    return sync_bce(a, v, torch.ones(len(a), device=a.device))


class FrozenCopy:
    """A frozen, eval-mode copy of a module: the loss it computes passes gradients to its input
    only. `refresh()` copies the live module's weights into it; generator_losses calls it once per
    step, before the copy's first use (refreshing between two uses would change in place the
    weights that the first use's graph saved for its backward pass)."""

    def __init__(self, live: nn.Module):
        self.live = live
        self.copy = copy.deepcopy(live).eval()
        for p in self.copy.parameters():
            p.requires_grad_(False)

    def refresh(self) -> None:
        self.copy.load_state_dict(self.live.state_dict())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.copy(x)


def vv_sync_loss(lip_copy: FrozenCopy, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        target = lip_copy(lip_windows(real))
    return F.l1_loss(lip_copy(lip_windows(fake)).float(), target.float())


def generator_losses(
    out: dict,
    batch: dict,
    weights: dict,
    expert: nn.Module,
    lip_copy: FrozenCopy | None,
    disc: nn.Module | None,
    use_gan: bool,
    use_sync: bool = True,
    both_decodes: bool = False,
    expert_vv: bool = False,
) -> tuple[torch.Tensor, dict]:
    """The weighted total and every term (tensors; the AV sync terms are detached and left out of
    the total while `use_sync` is false). `both_decodes` (`generator.lip_decode_losses: all`, the
    authors' code): the AV sync, VV sync and GAN terms are applied to the lip-path decode too, as
    `<term>_lip` with the same weights; otherwise that decode has its L1 term only. `expert_vv`
    (the lip encoder is the sync expert's face encoder): the VV sync terms are the expert's
    gradient too, so they wait for `use_sync` like the AV terms (from the first step they painted
    colour patterns on the lips that the discriminator then fought)."""
    target = batch["target"]
    fake = out["audio_frames"]
    parts = {"l1": F.l1_loss(fake.float(), target.float())}
    if "lip_frames" in out:
        parts["l1_lip"] = F.l1_loss(out["lip_frames"].float(), target.float())
    if "lip_read" in out:
        parts["store"] = mem.store_loss(out)
        parts["align"] = mem.align_loss(out)
        if weights.get("recall", 0.0) > 0:
            parts["recall"] = mem.recall_loss(out)
    with torch.set_grad_enabled(use_sync and torch.is_grad_enabled()):
        parts["av_sync"] = av_sync_loss(expert, fake, batch["mel"])
    sync_terms = ("av_sync", "vv_sync") if expert_vv else ("av_sync",)
    if lip_copy is not None:
        lip_copy.refresh()
        with torch.set_grad_enabled((use_sync or not expert_vv) and torch.is_grad_enabled()):
            parts["vv_sync"] = vv_sync_loss(lip_copy, fake, target)
    if use_gan and disc is not None:
        parts["gan"] = g_adversarial(disc(fake.reshape(-1, *fake.shape[2:])))
    if both_decodes and "lip_frames" in out:
        second = out["lip_frames"]
        with torch.set_grad_enabled(use_sync and torch.is_grad_enabled()):
            parts["av_sync_lip"] = av_sync_loss(expert, second, batch["mel"])
        if lip_copy is not None:
            with torch.set_grad_enabled((use_sync or not expert_vv) and torch.is_grad_enabled()):
                parts["vv_sync_lip"] = vv_sync_loss(lip_copy, second, target)
        if use_gan and disc is not None:
            parts["gan_lip"] = g_adversarial(disc(second.reshape(-1, *second.shape[2:])))
    total = weights["l1"] * (parts["l1"] + parts.get("l1_lip", 0.0))
    for name in ("store", "align", "recall", "av_sync", "vv_sync", "gan"):
        for key in (name, f"{name}_lip"):
            if key in parts and (use_sync or name not in sync_terms):
                total = total + weights[name] * parts[key]
    return total, parts
