"""A processed store of deliberately easy talking faces, written straight into the store format,
for tests that must see a generator learn within seconds (the embedded corpus needs minutes).

Each identity is a textured face (its own skin tone, texture and eye spacing) on its own
background; each clip's audio is a voiced buzz whose loudness follows a smooth random envelope,
and the mouth's opening follows the same envelope at each frame's audio window. So the mouth is
a function of the audio and of nothing else: a generator that copies a reference frame's mouth
(the composite baseline) is wrong wherever the loudness differs, one that draws the mouth from
the audio is right.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.io import align, audio
from pipeline.io.store import N_LM, write_shard

FPS, SR = 25, 16000


def envelope(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Loudness in [0, 1] per audio sample: a few slow random sinusoids (2-5 Hz, like syllables)."""
    t = np.arange(int(seconds * SR)) / SR
    e = sum(
        rng.uniform(0.5, 1.0) * np.sin(2 * np.pi * rng.uniform(2.0, 5.0) * t + rng.uniform(0, 2 * np.pi))
        for _ in range(3)
    )
    return np.clip(0.5 + 0.3 * e, 0.0, 1.0)


def speech(rng: np.random.Generator, env: np.ndarray) -> np.ndarray:
    """A voiced buzz (harmonics of a random pitch, a little noise) at the envelope's loudness."""
    t = np.arange(len(env)) / SR
    f0 = rng.uniform(100, 220)
    buzz = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 12))
    wav = env**2 * (0.25 * buzz + 0.05 * rng.standard_normal(len(t)))
    return wav.astype(np.float32)


def face(identity: int, opening: float, size: int = 96) -> np.ndarray:
    """One frame: the identity's face with the mouth open by `opening` (0..1), uint8 [S, S, 3]."""
    rng = np.random.default_rng(1000 + identity)
    yy, xx = np.mgrid[0:size, 0:size] / size
    bg = rng.uniform(40, 200, 3)
    skin = rng.uniform(120, 230, 3)
    img = np.empty((size, size, 3), np.float64)
    img[:] = bg
    inside = ((xx - 0.5) / 0.36) ** 2 + ((yy - 0.52) / 0.46) ** 2 < 1
    texture = rng.uniform(-12, 12, (8, 8, 3)).repeat(size // 8 + 1, 0).repeat(size // 8 + 1, 1)[:size, :size]
    img[inside] = (skin + texture)[inside]
    eye_dx = rng.uniform(0.12, 0.18)
    for ex in (0.5 - eye_dx, 0.5 + eye_dx):
        img[((xx - ex) / 0.06) ** 2 + ((yy - 0.37) / 0.035) ** 2 < 1] = (30, 30, 40)
    # lips and the open mouth with soft edges (as a real mouth's shading has)
    half_w, half_h = 0.15, 0.02 + 0.09 * opening
    r = np.sqrt(((xx - 0.5) / half_w) ** 2 + ((yy - 0.71) / half_h) ** 2)
    for colour, radius in ((skin * np.array([0.75, 0.45, 0.5]), 1.3), (np.array([45.0, 15.0, 25.0]), 1.0)):
        a = 1.0 / (1.0 + np.exp((r - radius) / 0.08))
        img = img * (1 - a[..., None]) + colour * a[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def clip(identity: int, seed: int, n_frames: int = 29, size: int = 96) -> dict:
    """A clip in the store's form: frames, landmarks (none are used: zeros), mel, meta."""
    rng = np.random.default_rng(seed)
    env = envelope(rng, n_frames / FPS)
    wav = speech(rng, env)
    mel = audio.melspectrogram(wav)
    # each frame's mouth follows the loudness at the centre of its audio window (align.mel_window)
    centre = (np.arange(n_frames) + 0.5) / FPS
    opening = np.interp(centre, np.arange(len(env)) / SR, env)
    frames = np.stack([face(identity, o, size) for o in opening])
    return {"frames": frames, "landmarks": np.zeros((n_frames, N_LM, 2), np.float16), "mel": mel, "opening": opening}


def write_store(root: Path, identities: int = 4, clips: dict | None = None, size: int = 96) -> pd.DataFrame:
    """data/processed/<dataset> under `root`: one shard and the index. `clips`: {split: count}."""
    clips = clips or {"train": 24, "val": 6, "test": 2}
    items, seed = [], 0
    for split, count in clips.items():
        for k in range(count):
            seed += 1
            c = clip(k % identities, seed, size=size)
            c.update(clip_id=f"{split}/{k:05d}", meta={"split": split, "word": f"ID{k % identities}"})
            assert len(align.valid_frames(len(c["frames"]), len(c["mel"]))) > 0
            items.append(c)
    shard = root / "shards" / "shard-0"
    write_shard(
        shard,
        iter(sorted(items, key=lambda c: c["clip_id"])),
        size,
        "raw",
        pd.DataFrame(columns=["clip_id", "split", "reason"]),
    )
    index = pd.read_parquet(shard / "clips.parquet")
    index["shard"] = 0
    index.to_parquet(root / "index.parquet", index=False)
    pd.DataFrame(columns=["clip_id", "split", "reason"]).to_parquet(root / "failures.parquet", index=False)
    return index
