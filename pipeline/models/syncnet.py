"""The lip-sync expert: Wav2Lip's SyncNet design (Prajwal et al. 2020), written anew.

Faces: 5 lower-half crops stacked as 15 channels (frame-major), [B, 15, S/2, S], values in [0, 1]
RGB (the project's convention). Audio: the 1 x 80 x 16 mel window. Both encoders end in ReLU, so
the L2-normalised embeddings are non-negative and their cosine lies in [0, 1]; the loss is BCE
on that cosine (in sync = 1). At 96 px and width 1.0 the parameter names and shapes are those of
Wav2Lip's `SyncNet_color`, so its released `lipsync_expert.pth` loads with strict=True; that
network was trained on BGR images, so `input_channels="bgr"` makes `forward` reorder the colour
channels at the boundary. At 128 px one more stride-2 block brings the face map to 1x1.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .layout import channels_last


class ConvBlock(nn.Module):
    """Conv2d + BatchNorm2d (+ identity) + ReLU; parameter names as Wav2Lip's `Conv2d`."""

    def __init__(self, cin: int, cout: int, kernel, stride, padding, residual: bool = False):
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


def _scaled(c: int, width: float) -> int:
    return max(8, int(round(c * width)))


# (cin, cout, kernel, stride, padding, residual) at width 1.0
FACE_96 = [
    (15, 32, 7, 1, 3, False),
    (32, 64, 5, (1, 2), 1, False),
    (64, 64, 3, 1, 1, True),
    (64, 64, 3, 1, 1, True),
    (64, 128, 3, 2, 1, False),
    (128, 128, 3, 1, 1, True),
    (128, 128, 3, 1, 1, True),
    (128, 128, 3, 1, 1, True),
    (128, 256, 3, 2, 1, False),
    (256, 256, 3, 1, 1, True),
    (256, 256, 3, 1, 1, True),
    (256, 512, 3, 2, 1, False),
    (512, 512, 3, 1, 1, True),
    (512, 512, 3, 1, 1, True),
    (512, 512, 3, 2, 1, False),
    (512, 512, 3, 1, 0, False),
    (512, 512, 1, 1, 0, False),
]
EXTRA_128 = (512, 512, 3, 2, 1, False)  # inserted before the last 1x1 block: 2x2 -> 1x1
AUDIO = [
    (1, 32, 3, 1, 1, False),
    (32, 32, 3, 1, 1, True),
    (32, 32, 3, 1, 1, True),
    (32, 64, 3, (3, 1), 1, False),
    (64, 64, 3, 1, 1, True),
    (64, 64, 3, 1, 1, True),
    (64, 128, 3, 3, 1, False),
    (128, 128, 3, 1, 1, True),
    (128, 128, 3, 1, 1, True),
    (128, 256, 3, (3, 2), 1, False),
    (256, 256, 3, 1, 1, True),
    (256, 256, 3, 1, 1, True),
    (256, 512, 3, 1, 0, False),
    (512, 512, 1, 1, 0, False),
]


def _stack(spec, width: float, first_in: int, last_out: int | None = None) -> nn.Sequential:
    layers = []
    for k, (cin, cout, kernel, stride, padding, residual) in enumerate(spec):
        cin = first_in if k == 0 else _scaled(cin, width)
        cout = last_out if last_out is not None and k == len(spec) - 1 else _scaled(cout, width)
        layers.append(ConvBlock(cin, cout, kernel, stride, padding, residual))
    return nn.Sequential(*layers)


class SyncNet(nn.Module):
    def __init__(
        self, img_size: int = 96, width: float = 1.0, input_channels: str = "rgb", audio_width: float | None = None
    ):
        super().__init__()
        if img_size not in (96, 128):
            raise ValueError(f"img_size must be 96 or 128, got {img_size}")
        if input_channels not in ("rgb", "bgr"):
            raise ValueError(f"input_channels must be rgb or bgr, got {input_channels}")
        face = list(FACE_96)
        if img_size == 128:
            face.insert(len(face) - 1, EXTRA_128)
        self.embed_dim = _scaled(512, width)
        # the audio encoder may be wider than the face encoder (it costs a fifteenth of the face
        # encoder's operations at equal width); its last 1x1 layer maps to the shared embedding
        audio_width = width if audio_width is None else audio_width
        self.face_encoder = _stack(face, width, 15)
        self.audio_encoder = _stack(AUDIO, audio_width, 1, last_out=self.embed_dim)
        self.img_size, self.width, self.input_channels = img_size, width, input_channels
        self.audio_width = audio_width
        channels_last(self)

    def config(self) -> dict:
        return {
            "img_size": self.img_size,
            "width": self.width,
            "input_channels": self.input_channels,
            "audio_width": self.audio_width,
        }

    def _to_network_channels(self, faces: torch.Tensor) -> torch.Tensor:
        if self.input_channels == "rgb":
            return faces
        b, c, h, w = faces.shape
        return faces.view(b, c // 3, 3, h, w).flip(2).reshape(b, c, h, w)  # RGB -> BGR per frame

    def forward(self, mel: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mel [B, 1, 80, 16], faces [B, 15, S/2, S] RGB in [0, 1] -> unit embeddings (audio, face)."""
        v = self.face_encoder(self._to_network_channels(faces))
        a = self.audio_encoder(mel)
        if v.shape[-2:] != (1, 1) or a.shape[-2:] != (1, 1):
            raise ValueError(f"unexpected input size: face map {tuple(v.shape)}, audio map {tuple(a.shape)}")
        return F.normalize(a.flatten(1), dim=1), F.normalize(v.flatten(1), dim=1)


def sync_probability(audio_emb: torch.Tensor, face_emb: torch.Tensor) -> torch.Tensor:
    """Cosine of the (non-negative, unit) embeddings: the probability of being in sync."""
    return (audio_emb * face_emb).sum(1).clamp(1e-6, 1 - 1e-6)


def sync_bce(audio_emb: torch.Tensor, face_emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy(sync_probability(audio_emb, face_emb).float(), labels.float())


def in_batch_contrastive(
    audio_emb: torch.Tensor, face_emb: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1
) -> torch.Tensor:
    """InfoNCE over the in-sync pairs of a batch: each positive audio window must pick its own
    face window among all the batch's face windows (and vice versa). It gives a strong gradient
    from the first step, which gets the expert off BCE's 0.69 plateau on every seed."""
    pos = labels > 0.5
    if pos.sum() < 2:
        return audio_emb.sum() * 0.0
    a, v = audio_emb[pos].float(), face_emb.float()
    logits = a @ v.t() / temperature
    targets = torch.nonzero(pos).flatten()
    loss_a = F.cross_entropy(logits, targets)
    loss_v = F.cross_entropy(v[pos] @ audio_emb.float().t() / temperature, targets)
    return 0.5 * (loss_a + loss_v)


def grouped_sync_losses(
    audio_emb: torch.Tensor, face_emb: torch.Tensor, groups: torch.Tensor, temperature: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """(BCE, InfoNCE) over every audio/face pair of the same group (clip).

    BCE on the cosine: diagonal pairs are in sync, the other pairs of a group are off sync; the
    two classes are weighted equally. InfoNCE: each audio window must pick its own face window
    among its group's (and each face window its audio window), which gives a strong gradient from
    the first step and gets the expert off BCE's 0.69 plateau on every seed."""
    a, v = audio_emb.float(), face_emb.float()
    sim = a @ v.t()
    same = groups[:, None] == groups[None, :]
    eye = torch.eye(len(groups), dtype=torch.bool, device=sim.device)
    p = sim.clamp(1e-6, 1 - 1e-6)
    neg = same & ~eye
    bce = -0.5 * torch.log(p[eye]).mean() - 0.5 * (torch.log(1 - p[neg]).mean() if neg.any() else 0.0)
    logits = (sim / temperature).masked_fill(~same, float("-inf"))
    target = torch.arange(len(groups), device=sim.device)
    nce = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    return bce, nce
