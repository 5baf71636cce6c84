"""What the generator stage writes besides the model: sample grids, the per-step curves, and the
final check on the val split (whole clips, audio path only):

- mouth-region L1 and PSNR of the generated frames against ground truth, beside the composite
  baseline (the target's upper half with the reference's lower half: what a generator that
  ignores the audio and copies the reference's mouth would score);
- the expert's offset and confidence on the generated clips, beside the reference-copy clips
  (the same composite, whose mouth is the reference's: it follows the audio of half a clip away,
  so its confident offset is far from 0 and its confidence at offset 0 is low).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..evaluate import generate as gen
from ..evaluate.metrics import mouth, psnr
from ..runtime import write_curves_csv
from .sync_check import clip_embeddings, estimate_offset, offset_distances

PLOT_FIELDS = [
    "step",
    "loss",
    "l1",
    "l1_lip",
    "store",
    "align",
    "av_sync",
    "vv_sync",
    "gan",
    "d_loss",
    "d_real",
    "d_fake",
    "val_l1",
    "val_psnr",
    "val_psnr_mouth",
    "val_sync_loss",
]


def save_grid(grid: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    Image.fromarray(grid).save(tmp)
    os.replace(tmp, path)


def write_plot(history: list[dict], path: Path) -> None:
    write_curves_csv(history, PLOT_FIELDS, path)


def composite(frames: np.ndarray, references: np.ndarray) -> np.ndarray:
    """The target's upper half with the reference's lower half."""
    out = frames.copy()
    half = frames.shape[1] // 2
    out[:, half:] = references[:, half:]
    return out


def sync_of(expert, frames: np.ndarray, mel: np.ndarray, search: int = 15) -> tuple[int, float, float]:
    """(offset, confidence, confidence at offset 0): median distance minus the minimum, and
    minus the distance at the true alignment (a clip whose mouth follows shifted audio has a
    confident minimum elsewhere, and a low confidence at 0)."""
    a, v = clip_embeddings(expert, frames, mel)
    d = offset_distances(a, v, search)
    offset, conf, _ = estimate_offset(d, search)
    return offset, conf, float(np.nanmedian(d) - d[search])


def final_check(model, expert, val, cfg: dict, max_clips: int = 64) -> dict:
    """The numbers the issue's proof asks for, over the val clips (up to max_clips)."""
    store = val.store
    fake_m, real_m, comp_m, offs, ref_offs, confs, at0, ref_at0 = [], [], [], [], [], [], [], []
    for row in val.clips.head(max_clips).itertuples():
        frames, mel = store.frames(row.clip_id), store.mel(row.clip_id)
        refs = gen.reference_frames(frames)
        fake = gen.generate_clip(model, frames, mel)
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
