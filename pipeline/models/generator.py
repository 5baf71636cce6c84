"""The SyncTalkFace generator (docs/design.md §5), written anew from the paper's description.

Read top to bottom:
- identity encoder: U-Net encoder on [masked target | reference] (6 channels) down to 1x1, with
  skips (16, 32, 64, 128, 256, 512, 512 channels at width 1.0);
- audio encoder: Wav2Lip's CNN on the 1 x 80 x 16 mel -> D (= 512 at width 1.0);
- lip encoder: the 5 frames centred on a target, upper half zeroed, [3, 5, S, S]; a Conv3d
  (kernel 5x7x7) collapses time, then a 2D CNN -> D (the paper's); or the sync expert's frozen
  face encoder (`ExpertLipEncoder`, the default recipe: docs/method.md);
- Audio-Lip Memory (models/memory.py);
- fusion: concat(audio feature, lip feature read from memory) -> dropout 0.5 -> linear 2D -> D
  (-> ReLU with `fusion: relu`);
- U-Net decoder with the identity skips -> tanh; each frame is decoded alone.

Output (`output`): `direct` is the paper's (the decoder's tanh is the frame). `residual` (this
project's default, a departure from the paper explained in docs/method.md) decodes a change to the
composite of the inputs (the masked target's upper half over the reference's lower half):
frame = tanh(atanh(composite) + z), with the last layer zero-initialised so that training starts
from the composite instead of from noise. A short CPU run then spends its steps on the mouth, not
on relearning to copy the face. Whether it also helps a full-scale GPU run is not measured.
`base_mouth: blurred` (the default) first blurs the composite's mouth region to coarse colour
cells: started from the reference's own lips, a short run often learns to keep them instead of
drawing the mouth from the audio (docs/method.md, "The generator's recipe on a CPU").

Sizes: 96 or 128 px (the last encoder block's kernel is the remaining map size: 3 at 96, 4 at
128); a width multiplier scales every channel count; T frames per sample come in as [B, T, ...]
and are flattened, so nothing depends on T. `use_memory=False` is the ablation: the same network
with the audio feature going to the fusion in place of the memory readout (a Wav2Lip-like
baseline that the memory must beat). Images are in [-1, 1], RGB.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..geometry import MOUTH_BOX
from .layout import channels_last
from .memory import AudioLipMemory
from .syncnet import AUDIO, ConvBlock, SyncNet, _scaled, _stack


def bottom_size(img_size: int) -> int:
    if img_size not in (96, 128):
        raise ValueError(f"img_size must be 96 or 128, got {img_size}")
    return img_size // 32  # five stride-2 blocks: 96 -> 3, 128 -> 4


class UpBlock(nn.Module):
    """ConvTranspose2d + BatchNorm + ReLU (upsampling step of the decoder)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: int, output_padding: int = 0):
        super().__init__()
        self.conv = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel, stride, padding, output_padding), nn.BatchNorm2d(cout), nn.ReLU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class IdentityEncoder(nn.Module):
    def __init__(self, img_size: int, width: float):
        super().__init__()
        c = [_scaled(n, width) for n in (16, 32, 64, 128, 256, 512, 512)]
        res = lambda n: ConvBlock(n, n, 3, 1, 1, residual=True)
        k = bottom_size(img_size)
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(ConvBlock(6, c[0], 7, 1, 3)),
                nn.Sequential(ConvBlock(c[0], c[1], 3, 2, 1), res(c[1]), res(c[1])),
                nn.Sequential(ConvBlock(c[1], c[2], 3, 2, 1), res(c[2]), res(c[2]), res(c[2])),
                nn.Sequential(ConvBlock(c[2], c[3], 3, 2, 1), res(c[3]), res(c[3])),
                nn.Sequential(ConvBlock(c[3], c[4], 3, 2, 1), res(c[4]), res(c[4])),
                nn.Sequential(ConvBlock(c[4], c[5], 3, 2, 1), res(c[5])),
                nn.Sequential(ConvBlock(c[5], c[6], k, 1, 0), ConvBlock(c[6], c[6], 1, 1, 0)),
            ]
        )
        self.channels = c

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for block in self.blocks:
            x = block(x)
            skips.append(x)
        return skips  # the last is the 1x1 identity code


class LipEncoder(nn.Module):
    def __init__(self, img_size: int, width: float, dim: int):
        super().__init__()
        c0 = _scaled(32, width)
        self.front = nn.Sequential(nn.Conv3d(3, c0, (5, 7, 7), (1, 2, 2), (0, 3, 3)), nn.BatchNorm3d(c0), nn.ReLU())
        c = [_scaled(n, width) for n in (64, 128, 256, 512)]
        res = lambda n: ConvBlock(n, n, 3, 1, 1, residual=True)
        layers, cin = [], c0
        for cout in c:
            layers += [ConvBlock(cin, cout, 3, 2, 1), res(cout)]
            cin = cout
        layers += [ConvBlock(cin, dim, bottom_size(img_size), 1, 0), ConvBlock(dim, dim, 1, 1, 0)]
        self.body = nn.Sequential(*layers)

    def forward(self, lip: torch.Tensor) -> torch.Tensor:
        """[N, 3, 5, S, S] -> [N, D]."""
        if lip.shape[2] != 5:
            raise ValueError(f"the lip encoder takes 5-frame windows, got {lip.shape[2]} frames")
        return self.body(self.front(lip).squeeze(2)).flatten(1)


class ExpertLipEncoder(nn.Module):
    """The sync expert's face encoder as the lip encoder (`generator.lip_encoder: expert`, a
    departure from the paper, whose lip encoder trains with the generator): frozen, always in eval
    mode, it maps the same 5-frame windows to the expert's face embedding (before normalisation).

    The paper's lip encoder, trained in a short run by the lip-path decode and the store term,
    encodes who is speaking, not the mouth: on the embedded corpus 98% of its features' variance
    lies between clips and no linear map from the audio predicts them (docs/method.md). The
    expert's face embedding was trained to agree with the audio, so the lip addresses it gives
    are ones the audio can learn to make. Training only: inference never runs
    a lip encoder."""

    def __init__(self, img_size: int, width: float, input_channels: str = "rgb"):
        super().__init__()
        net = SyncNet(img_size, width, input_channels)
        self.face_encoder, self.input_channels, self.dim = net.face_encoder, input_channels, net.embed_dim
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> ExpertLipEncoder:
        return self  # frozen: its batch norms keep the expert's statistics

    def forward(self, lip: torch.Tensor) -> torch.Tensor:
        """[N, 3, 5, S, S] in [-1, 1] (upper half zeroed) -> [N, D]: the lower halves in [0, 1],
        stacked frame-major as the expert takes them."""
        if lip.shape[2] != 5:
            raise ValueError(f"the lip encoder takes 5-frame windows, got {lip.shape[2]} frames")
        n, c, t, s, _ = lip.shape
        faces = ((lip[..., s // 2 :, :] + 1.0) / 2.0).transpose(1, 2).reshape(n, c * t, s // 2, s)
        return self.face_encoder(self._to_network_channels(faces)).flatten(1)

    _to_network_channels = SyncNet._to_network_channels  # RGB -> the channel order it was trained on


class Decoder(nn.Module):
    def __init__(self, img_size: int, width: float, skips: list[int], dim: int, residual: bool = False):
        super().__init__()
        s = skips  # 16, 32, 64, 128, 256, 512, 512 (scaled)
        u = [_scaled(n, width) for n in (512, 512, 384, 256, 128, 64)]
        k = bottom_size(img_size)
        self.blocks = nn.ModuleList(
            [
                ConvBlock(dim, s[6], 1, 1, 0),  # 1x1
                nn.Sequential(UpBlock(s[6] + s[6], u[0], k, 1, 0), ConvBlock(u[0], u[0], 3, 1, 1, True)),  # k x k
                nn.Sequential(UpBlock(u[0] + s[5], u[1], 3, 2, 1, 1), ConvBlock(u[1], u[1], 3, 1, 1, True)),
                nn.Sequential(UpBlock(u[1] + s[4], u[2], 3, 2, 1, 1), ConvBlock(u[2], u[2], 3, 1, 1, True)),
                nn.Sequential(UpBlock(u[2] + s[3], u[3], 3, 2, 1, 1), ConvBlock(u[3], u[3], 3, 1, 1, True)),
                nn.Sequential(UpBlock(u[3] + s[2], u[4], 3, 2, 1, 1), ConvBlock(u[4], u[4], 3, 1, 1, True)),
                nn.Sequential(UpBlock(u[4] + s[1], u[5], 3, 2, 1, 1), ConvBlock(u[5], u[5], 3, 1, 1, True)),
            ]
        )
        head = _scaled(32, width)
        self.out = nn.Sequential(ConvBlock(u[5] + s[0], head, 3, 1, 1), nn.Conv2d(head, 3, 1))
        self.residual = residual
        if residual:  # start exactly at the composite
            nn.init.zeros_(self.out[1].weight)
            nn.init.zeros_(self.out[1].bias)

    def forward(self, code: torch.Tensor, skips: list[torch.Tensor], base: torch.Tensor | None = None) -> torch.Tensor:
        x = code[:, :, None, None]
        for block, skip in zip(self.blocks, reversed(skips)):
            x = torch.cat([block(x), skip], dim=1)
        z = self.out(x)
        if not self.residual:
            return torch.tanh(z)
        return torch.tanh(torch.atanh(base.clamp(-0.999, 0.999)) + z)


def mouth_blur_mask(size: int, box=MOUTH_BOX, device=None) -> torch.Tensor:
    """[1, 1, S, S] weight in [0, 1]: 1 over `box` (top, bottom, left, right as fractions of the
    crop; the default is the crop's mouth region: lips, mouth corners and the upper chin), feathered
    over S/12 pixels. Blurring the lips alone (0.62-0.82 x 0.32-0.68) left one seed of three
    copying the reference's jaw and corners (docs/method.md, "The generator's recipe on a CPU")."""
    top, bottom, left, right = box
    m = torch.zeros(1, 1, size, size, device=device)
    m[..., round(top * size) : round(bottom * size), round(left * size) : round(right * size)] = 1.0
    k = max(3, size // 12) | 1
    return F.avg_pool2d(m, k, stride=1, padding=k // 2, count_include_pad=False)


def blur_mouth(frames: torch.Tensor, box=MOUTH_BOX) -> torch.Tensor:
    """[N, 3, S, S]: the region `box` replaced by the frame's colours on a 6 x 6 grid of cells
    (skin tone and shading stay, the lips' shape goes)."""
    s = frames.shape[-1]
    coarse = F.interpolate(F.adaptive_avg_pool2d(frames, 6), size=(s, s), mode="bilinear", align_corners=False)
    w = mouth_blur_mask(s, box, frames.device).to(frames.dtype)
    return frames * (1 - w) + coarse * w


def intervene(readout: torch.Tensor, mode: str) -> torch.Tensor:
    """The audio-addressed readout [N, D] as is, zeroed, or shuffled across its N rows by a fixed
    permutation without fixed points (a seeded random order, each row taking the next one's)."""
    if mode == "as_is":
        return readout
    if mode == "zeroed":
        return torch.zeros_like(readout)
    if mode != "shuffled":
        raise ValueError(f"readout_mode must be as_is, shuffled or zeroed, got {mode!r}")
    n = len(readout)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    perm = torch.empty_like(order)
    perm[order] = torch.roll(order, -1)
    return readout[perm.to(readout.device)]


class Generator(nn.Module):
    def __init__(
        self,
        img_size: int = 96,
        width: float = 1.0,
        use_memory: bool = True,
        slots: int = 96,
        dropout: float = 0.5,
        address_scale: float = 16.0,
        output: str = "direct",
        base_mouth: str = "reference",
        blur_box=MOUTH_BOX,
        query_norm: str = "none",
        audio_drop: float = 0.0,
        lip_encoder: dict | None = None,
        fusion: str = "relu",
    ):
        super().__init__()
        if output not in ("direct", "residual"):
            raise ValueError(f"output must be direct or residual, got {output!r}")
        if base_mouth not in ("reference", "blurred"):
            raise ValueError(f"base_mouth must be reference or blurred, got {base_mouth!r}")
        dim = _scaled(512, width)
        self.identity = IdentityEncoder(img_size, width)
        self.audio = _stack(AUDIO, width, 1)
        # lip_encoder: None = the paper's (trained with the generator); {"kind": "expert", "width",
        # "input_channels"} = the sync expert's frozen face encoder (train/generator.py's build copies its weights)
        if lip_encoder is not None and (
            lip_encoder.get("kind") != "expert" or set(lip_encoder) != {"kind", "width", "input_channels"}
        ):
            raise ValueError(f"lip_encoder must be None or {{kind: expert, width, input_channels}}, got {lip_encoder}")
        if not use_memory:
            lip_encoder = None
        if lip_encoder is None:
            self.lip = LipEncoder(img_size, width, dim) if use_memory else None
        else:
            self.lip = ExpertLipEncoder(img_size, lip_encoder["width"], lip_encoder["input_channels"])
        lip_dim = self.lip.dim if isinstance(self.lip, ExpertLipEncoder) else dim
        self.memory = (
            AudioLipMemory(dim, slots, address_scale, query_norm=query_norm, lip_dim=lip_dim) if use_memory else None
        )
        if not 0.0 <= audio_drop < 1.0:
            raise ValueError(f"audio_drop must be in [0, 1), got {audio_drop}")
        self.audio_drop = float(audio_drop) if use_memory else 0.0
        if fusion not in ("relu", "linear"):
            raise ValueError(f"fusion must be relu or linear, got {fusion!r}")
        # `linear`: the authors' code; `relu`: this project's (a departure: docs/method.md)
        self.fusion = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(2 * dim, dim), *([nn.ReLU()] if fusion == "relu" else [])
        )
        self.decoder = Decoder(img_size, width, self.identity.channels, dim, residual=output == "residual")
        self.img_size, self.width, self.use_memory, self.dim = img_size, width, use_memory, dim
        self.base_mouth, self.blur_box = base_mouth, tuple(float(v) for v in blur_box)
        if not (0 <= self.blur_box[0] < self.blur_box[1] <= 1 and 0 <= self.blur_box[2] < self.blur_box[3] <= 1):
            raise ValueError(f"blur_box must be (top, bottom, left, right) fractions in [0, 1], got {blur_box}")
        self._config = {
            "img_size": img_size,
            "width": width,
            "use_memory": use_memory,
            "slots": slots,
            "dropout": dropout,
            "address_scale": address_scale,
            "output": output,
            "base_mouth": base_mouth,
            "blur_box": list(self.blur_box),
            "query_norm": query_norm,
            "audio_drop": self.audio_drop,
            "lip_encoder": lip_encoder,
            "fusion": fusion,
        }
        # the causal test of the memory (evaluate/memory_analysis.py): as_is, shuffled, zeroed
        self.readout_mode = "as_is"
        channels_last(self)

    def config(self) -> dict:
        return dict(self._config)

    def encode_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """[N, 1, 80, 16] -> [N, D]."""
        return self.audio(mel).flatten(1)

    def decode(
        self,
        audio: torch.Tensor,
        lip_feature: torch.Tensor,
        skips: list[torch.Tensor],
        base: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.decoder(self.fusion(torch.cat([audio, lip_feature], dim=1)), skips, base)

    @staticmethod
    def composite(masked: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """The masked target's upper half over the reference's lower half ([N, 3, S, S])."""
        half = masked.shape[-2] // 2
        return torch.cat([masked[..., :half, :], reference[..., half:, :]], dim=-2)

    def forward(
        self,
        masked: torch.Tensor,
        reference: torch.Tensor,
        mel: torch.Tensor,
        lip: torch.Tensor | None = None,
        lip_path: str = "value_recall",
    ) -> dict:
        """masked, reference [B, T, 3, S, S]; mel [B, T, 1, 80, 16]; lip [B, T, 3, 5, S, S] or None
        (inference: audio only). Returns `audio_frames` [B, T, 3, S, S] decoded from the
        audio-addressed memory readout, and in training (lip given, memory variant) `lip_frames`
        decoded from the lip feature (`value_recall`: the lip-addressed readout, as the authors'
        code did; `raw_lip`: the projected lip feature itself, as the paper's equation writes),
        plus the memory's addresses and readouts."""
        b, t = masked.shape[:2]
        flat = lambda x: x.reshape(b * t, *x.shape[2:])
        skips = self.identity(torch.cat([flat(masked), flat(reference)], dim=1))
        base = None
        if self.decoder.residual:
            base = self.composite(flat(masked), flat(reference))
            if self.base_mouth == "blurred":
                base = blur_mouth(base, self.blur_box)
        audio = self.encode_audio(flat(mel))
        out: dict = {}
        if self.memory is None:
            recalled = audio
        else:
            lip_feat = self.lip(flat(lip)) if lip is not None else None
            out = self.memory(audio, lip_feat)
            recalled = intervene(out["audio_read"], self.readout_mode)
        unflat = lambda x: x.reshape(b, t, *x.shape[1:])
        direct = audio
        if self.training and self.audio_drop > 0:
            # training only: for a fraction of the frames the fusion gets no direct audio feature,
            # so the decoder must draw those mouths from the memory readout (a departure from the
            # paper, whose decoder may and does ignore the memory: docs, "The generator")
            keep = torch.rand(len(audio), 1, device=audio.device) >= self.audio_drop
            direct = audio * keep.to(audio.dtype)
        out["audio_frames"] = unflat(self.decode(direct, recalled, skips, base))
        if self.memory is not None and lip is not None:
            if lip_path not in ("value_recall", "raw_lip"):
                raise ValueError(f"lip_path must be value_recall or raw_lip, got {lip_path}")
            second = out["lip_read"] if lip_path == "value_recall" else out["lip_proj"]
            out["lip_frames"] = unflat(self.decode(direct, second, skips, base))
        return out
