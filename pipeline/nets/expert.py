"""The sync expert as a frozen tool: the loader of the project's checkpoints, Wav2Lip's weights.

An expert checkpoint (pipeline.nets.checkpoints) records the network's config, including its
input convention: the project's experts take RGB; Wav2Lip's `lipsync_expert.pth` was trained on
BGR crops in [0, 1] (unaligned S3FD boxes, bottom padded by 10 px), so an imported expert
converts RGB to BGR at its boundary.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..errors import PipelineError
from ..models.syncnet import SyncNet
from .checkpoints import EXPERT_FORMAT, package, read

log = logging.getLogger("pipeline.sync_expert")


def package_expert(model: torch.nn.Module, step: int, metrics: dict, source: str = "trained") -> dict:
    return package(EXPERT_FORMAT, model, step, metrics, source=source)


def load_expert(path: str | Path, device: torch.device | str = "cpu") -> SyncNet:
    """The expert for frozen use: eval mode (BatchNorm statistics fixed, unlike Wav2Lip's
    generator training, which left the expert in training mode) and no gradients."""
    state = read(
        path,
        EXPERT_FORMAT,
        device,
        "not a sync-expert checkpoint of this project (import Wav2Lip's with `python -m pipeline import-expert FILE`)",
    )
    model = SyncNet(**state["config"]).to(device)
    model.load_state_dict(state["state_dict"])
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def wav2lip_state_dict(path: str | Path) -> dict:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a bad file
        raise PipelineError(f"{path}: cannot be read as a PyTorch checkpoint ({type(exc).__name__}: {exc})") from None
    sd = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(sd, dict) or not sd:
        raise PipelineError(f"{path}: no state_dict inside (expected Wav2Lip's {{'state_dict': ...}} layout)")
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in sd.items()}


def import_wav2lip(path: str | Path) -> SyncNet:
    """Wav2Lip's SyncNet_color weights as a project SyncNet (96 px, width 1, BGR input)."""
    model = SyncNet(96, 1.0, input_channels="bgr")
    sd = wav2lip_state_dict(path)
    result = model.load_state_dict(sd, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise PipelineError(
            f"{path}: not Wav2Lip's SyncNet_color layout: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    model.load_state_dict(sd, strict=True)
    log.warning(
        "imported Wav2Lip's expert: it was trained on unaligned S3FD face boxes (bottom padded by 10 px) "
        "in BGR; this project's aligned crops differ from its training crops, so expect lower confidence"
    )
    return model
