"""Sync-expert checkpoints: the project's format, the frozen loader, Wav2Lip's weights.

A checkpoint records the network's config, including its input convention: the project's
experts take RGB; Wav2Lip's `lipsync_expert.pth` was trained on BGR crops in [0, 1] (unaligned
S3FD boxes, bottom padded by 10 px), so an imported expert converts RGB to BGR at its boundary.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch

from ..errors import PipelineError
from ..models.syncnet import SyncNet

log = logging.getLogger("pipeline.sync_expert")
FORMAT = "synctalkface-syncnet-v1"


def package(model: torch.nn.Module, step: int, metrics: dict, source: str = "trained") -> dict:
    m = model.module if hasattr(model, "module") else model
    return {
        "format": FORMAT,
        "config": m.config(),
        "state_dict": m.state_dict(),
        "step": step,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        "source": source,
    }


def load_expert(path: str | Path, device: torch.device | str = "cpu") -> SyncNet:
    """The expert for frozen use: eval mode (BatchNorm statistics fixed, unlike Wav2Lip's
    generator training, which left the expert in training mode) and no gradients."""
    state = torch.load(path, map_location=device, weights_only=False)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise PipelineError(
            f"{path}: not a sync-expert checkpoint of this project (import Wav2Lip's with "
            f"`python -m pipeline import-expert FILE`)"
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


def import_to(path: str | Path, out_dir: Path, img_size: int) -> dict:
    if img_size != 96:
        raise PipelineError(f"Wav2Lip's expert works on 96 px crops, but preprocess.img_size is {img_size}")
    if not Path(path).is_file():
        raise PipelineError(f"sync_expert.pretrained: {path} does not exist")
    model = import_wav2lip(path)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = package(model, 0, {}, source=f"wav2lip:{Path(path).name}")
    torch.save(state, tmp / "expert.pt")
    torch.save(state, tmp / "last.pt")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return {"imported": 1, "parameters": sum(p.numel() for p in model.parameters())}
