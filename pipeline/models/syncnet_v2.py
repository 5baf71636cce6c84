"""SyncNet (Chung & Zisserman, ACCV 2016 workshops) as the LSE-D / LSE-C evaluation network.

This is the network of syncnet_python's `SyncNetModel.S` (github joonson/syncnet_python),
written anew: the same module names, indices and parameter shapes, so that the public
`syncnet_v2.model` (a flat name -> tensor dict) loads into it with strict=True.

- audio: MFCC window [B, 1, 13, 20] (13 coefficients x 20 steps of 10 ms = 0.2 s)
  -> netcnnaud (a 1x1 map of 512) -> netfcaud -> 1024-d feature;
- lips: [B, 3, 5, 224, 224] (BGR colour x 5 frames x H x W, raw 0-255 pixel values)
  -> netcnnlip (a Conv3d front end over the 5 frames, then 2D-like convolutions) -> netfclip -> 1024.
The features are not normalised: the evaluation compares them by Euclidean distance.

Files are not read here (models know tensors): `pipeline.evaluate.lse.load_syncnet_v2` reads
the weights and uses `layout_problems` to explain a file that does not fit.
"""

from __future__ import annotations

import torch
from torch import nn

FEATURE_DIM = 1024
MFCC_SHAPE = (1, 13, 20)
LIP_SHAPE = (3, 5, 224, 224)


def _conv2d(cin: int, cout: int, kernel, padding, stride=(1, 1)) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _conv3d(cin: int, cout: int, kernel, padding, stride=(1, 1, 1)) -> list[nn.Module]:
    return [nn.Conv3d(cin, cout, kernel, stride=stride, padding=padding), nn.BatchNorm3d(cout), nn.ReLU(inplace=True)]


def _head(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, dim))


class SyncNetV2(nn.Module):
    """The two-stream SyncNet; the Sequential indices match the original's state-dict names."""

    def __init__(self, feature_dim: int = FEATURE_DIM):
        super().__init__()
        self.netcnnaud = nn.Sequential(
            *_conv2d(1, 64, 3, 1),
            nn.MaxPool2d(1, 1),  # 0-3:   13 x 20
            *_conv2d(64, 192, 3, 1),
            nn.MaxPool2d(3, (1, 2)),  # 4-7:   11 x 9
            *_conv2d(192, 384, 3, 1),  # 8-10
            *_conv2d(384, 256, 3, 1),  # 11-13
            *_conv2d(256, 256, 3, 1),
            nn.MaxPool2d(3, 2),  # 14-17: 5 x 4
            *_conv2d(256, 512, (5, 4), 0),  # 18-20: 1 x 1
        )
        self.netfcaud = _head(feature_dim)
        self.netfclip = _head(feature_dim)
        self.netcnnlip = nn.Sequential(
            *_conv3d(3, 96, (5, 7, 7), 0, (1, 2, 2)),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),  # 0-3:   1 x 54
            *_conv3d(96, 256, (1, 5, 5), (0, 1, 1), (1, 2, 2)),  # 4-6:   1 x 26
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),  # 7:     1 x 13
            *_conv3d(256, 256, (1, 3, 3), (0, 1, 1)),  # 8-10
            *_conv3d(256, 256, (1, 3, 3), (0, 1, 1)),  # 11-13
            *_conv3d(256, 256, (1, 3, 3), (0, 1, 1)),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),  # 14-17: 1 x 6
            *_conv3d(256, 512, (1, 6, 6), 0),  # 18-20: 1 x 1
        )

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        """[B, 1, 13, 20] MFCC windows -> [B, 1024]."""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lip(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, 3, 5, 224, 224] BGR 0-255 windows -> [B, 1024]."""
        return self.netfclip(self.netcnnlip(frames).flatten(1))

    def forward(self, mfcc: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_aud(mfcc), self.forward_lip(frames)


def layout_problems(model: nn.Module, state: dict) -> list[str]:
    """What keeps `state` from loading into `model` with strict=True ([] when it fits).

    BatchNorm's `num_batches_tracked` counters may be absent (files saved by old PyTorch lack
    them; PyTorch fills them in)."""
    if not isinstance(state, dict):
        return [f"expected a dict of tensors, found {type(state).__name__}"]
    own = model.state_dict()
    optional = {k for k in own if k.endswith("num_batches_tracked")}
    problems = []
    missing = [k for k in own if k not in state and k not in optional]
    unexpected = [k for k in state if k not in own]
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:4])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(map(str, unexpected[:4]))})")
    for k, v in state.items():
        if k in own and not isinstance(v, torch.Tensor):
            problems.append(f"{k} is a {type(v).__name__}, not a tensor")
        elif k in own and tuple(v.shape) != tuple(own[k].shape):
            problems.append(f"{k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
    return problems
