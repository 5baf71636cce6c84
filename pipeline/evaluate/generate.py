"""Whole-clip generation with a trained generator (audio path only, as at inference).

Used by the generator stage's final check, by `evaluate` and by `infer`: aligned uint8 crops and
the clip's mel in, generated uint8 crops out. Each frame takes the mel window of
pipeline.io.align (the one mapping training used); frames whose window leaves the audio take the
nearest valid frame's window. References come from the same clip, half a clip away (the paper's
reconstruction protocol), unless given.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import PipelineError
from ..io import align
from ..models.generator import Generator
from .metrics import to_uint8

FORMAT = "synctalkface-generator-v1"


def package(model: torch.nn.Module, step: int, metrics: dict, extra: dict | None = None) -> dict:
    m = model.module if hasattr(model, "module") else model
    return {
        "format": FORMAT,
        "config": m.config(),
        "state_dict": m.state_dict(),
        "step": step,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        **(extra or {}),
    }


def load_generator(path: str | Path, device: torch.device | str = "cpu") -> Generator:
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: generator checkpoint not found (train it: train_generator)")
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:
        raise PipelineError(f"{path}: cannot be read as a checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise PipelineError(f"{path}: not a generator checkpoint of this project")
    model = Generator(**state["config"]).to(device)
    model.load_state_dict(state["state_dict"])
    return model.eval()


def mel_windows(n_frames: int, mel: np.ndarray, fps: float = 25.0) -> np.ndarray:
    """[n_frames, 1, 80, 16]: each frame's window; frames outside the valid range take the
    nearest valid frame's."""
    valid = align.valid_frames(n_frames, len(mel), fps)
    if len(valid) == 0:
        raise PipelineError(f"the audio ({len(mel)} mel frames) is too short for any 5-frame window")
    out = []
    for i in range(n_frames):
        j = min(max(i, valid.start), valid.stop - 1)
        out.append(mel[align.mel_window(j, n_frames, len(mel), fps)].T[None])
    return np.stack(out).astype(np.float32)


def to_model(frames: np.ndarray) -> torch.Tensor:
    """uint8 [N, S, S, 3] -> float [N, 3, S, S] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2), dtype=np.float32) / 127.5 - 1.0)


@torch.no_grad()
def generate(
    model: Generator, frames: np.ndarray, mels: np.ndarray, references: np.ndarray, batch: int = 32
) -> np.ndarray:
    """frames, references uint8 [N, S, S, 3]; mels [N, 1, 80, 16] -> generated uint8 [N, S, S, 3]."""
    device = next(model.parameters()).device
    size = frames.shape[1]
    out = []
    for s in range(0, len(frames), batch):
        target = to_model(frames[s : s + batch])
        masked = target.clone()
        masked[:, :, size // 2 :] = 0.0
        ref = to_model(references[s : s + batch])
        mel = torch.from_numpy(mels[s : s + batch])
        res = model(masked[:, None].to(device), ref[:, None].to(device), mel[:, None].to(device))
        out.append(to_uint8(res["audio_frames"][:, 0]))
    return np.concatenate(out)


def reference_frames(frames: np.ndarray) -> np.ndarray:
    """The reconstruction protocol's references: the same clip, half a clip away."""
    return np.roll(frames, len(frames) // 2, axis=0)


def generate_clip(model: Generator, frames: np.ndarray, mel: np.ndarray, fps: float = 25.0) -> np.ndarray:
    return generate(model, frames, mel_windows(len(frames), mel, fps), reference_frames(frames))
