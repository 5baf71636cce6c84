"""The checkpoint format of the project's two trained networks (the sync expert, the generator).

A checkpoint is a plain dict: `format` (which network), the network's `config` (its constructor's
arguments), its `state_dict`, the training `step` and numeric `metrics`, plus what the writer adds
(the expert's `source`, the generator's `variant` and `dataset`). No class of this package is
pickled, so a checkpoint loads with any later version whose constructor takes the same config.
The loaders: pipeline.nets.expert.load_expert and pipeline.nets.generate.load_generator.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import PipelineError

EXPERT_FORMAT = "synctalkface-syncnet-v1"
GENERATOR_FORMAT = "synctalkface-generator-v1"


def package(fmt: str, model: torch.nn.Module, step: int, metrics: dict, **extra) -> dict:
    """The checkpoint of `model` (a DDP wrapper saves its module); non-numeric metrics are dropped."""
    m = model.module if hasattr(model, "module") else model
    return {
        "format": fmt,
        "config": m.config(),
        "state_dict": m.state_dict(),
        "step": step,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        **extra,
    }


def read(path: str | Path, fmt: str, device: torch.device | str, wrong_format: str) -> dict:
    """A checkpoint of format `fmt`, or a PipelineError naming the file and what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # torch raises many types for a bad file
        raise PipelineError(f"{path}: cannot be read as a checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise PipelineError(f"{path}: {wrong_format}")
    return state
