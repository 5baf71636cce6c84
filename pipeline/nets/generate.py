"""Whole-clip generation with a trained generator (audio path only, as at inference), the
composite baseline, and the reconstruction check of a generator on whole clips.

Used by the generator stage's final check, by `evaluate`, the memory analysis and `infer`:
aligned uint8 crops and the clip's mel in, generated uint8 crops out. Each frame takes the mel
window of pipeline.io.align (the one mapping training used); frames whose window leaves the audio
take the nearest valid frame's window. References come from the same clip, half a clip away (the
paper's reconstruction protocol), unless given.

The final check (`final_check`) scores a generator on val clips:
- mouth-region L1 and PSNR of the generated frames against ground truth, beside the composite
  baseline (the target's upper half with the reference's lower half: what a generator that
  ignores the audio and copies the reference's mouth would score);
- the expert's offset and confidence on the generated clips, beside the reference-copy clips
  (the same composite, whose mouth is the reference's: it follows the audio of half a clip away,
  so its confident offset is far from 0 and its confidence at offset 0 is low).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import PipelineError
from ..io import align
from ..models.generator import Generator
from .checkpoints import GENERATOR_FORMAT, package, read
from .metrics import mouth, psnr, to_uint8
from .sync import sync_of


def package_generator(model: torch.nn.Module, step: int, metrics: dict, extra: dict | None = None) -> dict:
    return package(GENERATOR_FORMAT, model, step, metrics, **(extra or {}))


def load_generator(path: str | Path, device: torch.device | str = "cpu") -> Generator:
    """A trained generator in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: generator checkpoint not found (train it: train_generator)")
    state = read(path, GENERATOR_FORMAT, device, "not a generator checkpoint of this project")
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


def composite(frames: np.ndarray, references: np.ndarray) -> np.ndarray:
    """The target's upper half with the reference's lower half (uint8 frames [N, S, S, 3]; the
    generator's residual base, models.generator.Generator.composite, is the same on model tensors)."""
    out = frames.copy()
    half = frames.shape[1] // 2
    out[:, half:] = references[:, half:]
    return out


def final_check(model, expert, val, cfg: dict, max_clips: int = 64) -> dict:
    """The numbers the issue's proof asks for, over the val clips (up to max_clips)."""
    store = val.store
    fake_m, real_m, comp_m, offs, ref_offs, confs, at0, ref_at0 = [], [], [], [], [], [], [], []
    for row in val.clips.head(max_clips).itertuples():
        frames, mel = store.frames(row.clip_id), store.mel(row.clip_id)
        refs = reference_frames(frames)
        fake = generate_clip(model, frames, mel)
        comp = composite(frames, refs)
        valid = slice(2, len(frames) - 2)
        real_m.append(mouth(frames[valid]))
        fake_m.append(mouth(fake[valid]))
        comp_m.append(mouth(comp[valid]))
        o, c, c0 = sync_of(expert, fake, mel)
        ro, _, rc0 = sync_of(expert, comp, mel)
        offs.append(o)
        confs.append(c)
        at0.append(c0)
        ref_offs.append(ro)
        ref_at0.append(rc0)
    real, fake, comp = (np.concatenate(x).astype(np.float64) for x in (real_m, fake_m, comp_m))
    offs = np.array(offs)
    return {
        "final_mouth_l1": float(np.abs(fake - real).mean() / 255.0),
        "final_mouth_psnr": psnr(fake, real),
        "composite_mouth_l1": float(np.abs(comp - real).mean() / 255.0),
        "composite_mouth_psnr": psnr(comp, real),
        "final_sync_within1": float((np.abs(offs) <= 1).mean()),
        "final_sync_abs_offset": float(np.abs(offs).mean()),
        "final_sync_confidence": float(np.mean(confs)),
        "final_sync_confidence_at0": float(np.mean(at0)),
        "reference_sync_within1": float((np.abs(ref_offs) <= 1).mean()),
        "reference_sync_confidence_at0": float(np.mean(ref_at0)),
        "final_clips": len(offs),
    }
