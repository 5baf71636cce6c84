"""The visual-quality discriminator: judges the lower half of single face frames.

Wav2Lip's design (strided convolutions with LeakyReLU, no normalisation) ending in a global
average and one logit, so it works at 96 and 128 px alike. It returns *logits*: the losses use
BCE-with-logits, never a sigmoid followed by a clamped BCE (the authors' GAN term sat at that
clamp for their whole run). Spectral normalisation keeps the discriminator Lipschitz, which
keeps it from collapsing on small data.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from .layout import channels_last
from .syncnet import _scaled


def _conv(cin: int, cout: int, kernel: int, stride, padding: int) -> nn.Sequential:
    return nn.Sequential(spectral_norm(nn.Conv2d(cin, cout, kernel, stride, padding)), nn.LeakyReLU(0.2))


class QualityDiscriminator(nn.Module):
    def __init__(self, width: float = 1.0):
        super().__init__()
        c = [_scaled(n, width) for n in (32, 64, 128, 256, 512, 512)]
        self.body = nn.Sequential(
            _conv(3, c[0], 7, 1, 3),
            _conv(c[0], c[1], 5, (1, 2), 2),
            _conv(c[1], c[1], 5, 1, 2),  # S/2 x S -> square
            _conv(c[1], c[2], 5, 2, 2),
            _conv(c[2], c[2], 5, 1, 2),
            _conv(c[2], c[3], 5, 2, 2),
            _conv(c[3], c[3], 5, 1, 2),
            _conv(c[3], c[4], 3, 2, 1),
            _conv(c[4], c[4], 3, 1, 1),
            _conv(c[4], c[5], 3, 2, 1),
            _conv(c[5], c[5], 3, 1, 1),
        )
        self.head = spectral_norm(nn.Linear(c[5], 1))
        self.width = width
        channels_last(self)

    def config(self) -> dict:
        return {"width": self.width}

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [N, 3, S, S] in [-1, 1] -> one logit per frame, from the lower half only."""
        lower = frames[:, :, frames.shape[2] // 2 :]
        return self.head(self.body(lower).mean(dim=(2, 3))).squeeze(1)


def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (
        F.binary_cross_entropy_with_logits(real_logits.float(), torch.ones_like(real_logits.float()))
        + F.binary_cross_entropy_with_logits(fake_logits.float(), torch.zeros_like(fake_logits.float()))
    )


def g_adversarial(fake_logits: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(fake_logits.float(), torch.ones_like(fake_logits.float()))
