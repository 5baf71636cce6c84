"""What the generator stage writes besides the model: sample grids and the per-step curves (its
final check on the val split: pipeline.nets.generate.final_check)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..runtime import atomic_file, write_curves_csv

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

    with atomic_file(path, keep_suffix=True) as tmp:
        Image.fromarray(grid).save(tmp)


def write_plot(history: list[dict], path: Path) -> None:
    write_curves_csv(history, PLOT_FIELDS, path)
