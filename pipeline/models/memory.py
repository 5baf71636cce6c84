"""The Audio-Lip Memory of SyncTalkFace (Park et al., AAAI 2022), written anew from the paper.

Two learned matrices of `slots` rows: a key memory addressed by audio and a value memory that
holds lip features. The audio query and the lip feature are each linearly projected; an address
is softmax(scale * cosine(projection, memory rows)) over the slots. Both the audio address
(training and inference) and the lip address (training only) read the *value* memory.

Losses that belong to the memory (docs/design.md §5):
- store: MSE between the lip-addressed readout and the projected lip feature, the target
  detached, so the memory learns to hold lip features and never drags them towards itself;
- align: KL(lip address || audio address) with the lip address detached, so audio learns to
  address the slot the lip feature uses, and the lip address is not pulled towards audio's;
- recall (this project's, weight 0 in the paper's recipe): MSE between the audio-addressed
  readout and the projected lip feature, the target detached.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class AudioLipMemory(nn.Module):
    def __init__(
        self,
        dim: int,
        slots: int = 96,
        scale: float = 16.0,
        init_std: float = 0.5,
        query_norm: str = "none",
        lip_dim: int | None = None,
    ):
        super().__init__()
        if query_norm not in ("none", "batch"):
            raise ValueError(f"query_norm must be none or batch, got {query_norm!r}")
        self.key = nn.Parameter(torch.randn(slots, dim) * init_std)
        self.value = nn.Parameter(torch.randn(slots, dim) * init_std)
        self.audio_proj = nn.Linear(dim, dim)
        self.lip_proj = nn.Linear(lip_dim or dim, dim)  # lip_dim: a lip encoder of another width
        self.scale = scale
        # `batch`: each projected query centred and scaled per feature over the batch (running
        # statistics at inference) before its cosine with the memory rows. The encoders end in a
        # ReLU, so their features share one large mean direction, and uncentred queries all point
        # nearly the same way: every frame then gets nearly the same address.
        self.audio_norm = nn.BatchNorm1d(dim, affine=False) if query_norm == "batch" else nn.Identity()
        self.lip_norm = nn.BatchNorm1d(dim, affine=False) if query_norm == "batch" else nn.Identity()

    @property
    def slots(self) -> int:
        return self.key.shape[0]

    def address(self, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """softmax over slots of scale * cosine(query, row): [B, D] x [S, D] -> [B, S]."""
        cos = F.normalize(query, dim=-1) @ F.normalize(memory, dim=-1).t()
        return torch.softmax(self.scale * cos, dim=-1)

    def recall(self, audio: torch.Tensor) -> dict:
        """Inference path: the audio address reads the value memory."""
        a_addr = self.address(self.audio_norm(self.audio_proj(audio)), self.key)
        return {"audio_address": a_addr, "audio_read": a_addr @ self.value}

    def forward(self, audio: torch.Tensor, lip: torch.Tensor | None = None) -> dict:
        out = self.recall(audio)
        if lip is not None:
            lip_p = self.lip_proj(lip)
            l_addr = self.address(self.lip_norm(lip_p), self.value)
            out.update(lip_proj=lip_p, lip_address=l_addr, lip_read=l_addr @ self.value)
        return out


def store_loss(out: dict) -> torch.Tensor:
    """MSE(lip-addressed readout, projected lip feature); the target does not move."""
    return F.mse_loss(out["lip_read"].float(), out["lip_proj"].detach().float())


def recall_loss(out: dict) -> torch.Tensor:
    """MSE(audio-addressed readout, projected lip feature), the lip feature detached: what audio
    recalls from the memory must be the frame's lip feature (the paper asks it of the addresses
    alone, through `align`). Trains the audio side and the memory rows; never the lip path."""
    return F.mse_loss(out["audio_read"].float(), out["lip_proj"].detach().float())


def align_loss(out: dict, eps: float = 1e-8) -> torch.Tensor:
    """KL(lip address || audio address) per sample, averaged; the lip address is detached."""
    p = out["lip_address"].detach().float()
    q = out["audio_address"].float()
    return (p * (torch.log(p + eps) - torch.log(q + eps))).sum(-1).mean()


def usage_entropy(addresses: torch.Tensor) -> float:
    """Entropy (nats) of the mean address over a set of queries: log(slots) when every slot is
    used equally, 0 when one slot takes everything."""
    m = addresses.detach().float().mean(0)
    return float(-(m * torch.log(m + 1e-12)).sum())
