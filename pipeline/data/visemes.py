"""Mouth shapes from phonemes: each espeak-ng phoneme's viseme target (jaw opening, lip width,
lip rounding) and the smoothed mouth track of a phoneme timing. The embedded corpus animates its
faces with it; the memory analysis orders its phoneme heatmap by it.
"""

from __future__ import annotations

import numpy as np

from .speech import Segment, is_silence

# (open, width, round) targets. open 0..1 (jaw), width -1..1 (spread), round 0..1 (protrude)
_VISEMES: list[tuple[tuple[str, ...], tuple[float, float, float]]] = [
    (("p", "b", "m"), (0.0, 0.0, 0.0)),
    (("f", "v"), (0.06, 0.1, 0.0)),
    (("T", "D"), (0.2, 0.15, 0.0)),
    (("s", "z"), (0.1, 0.45, 0.0)),
    (("S", "Z", "tS", "dZ"), (0.16, -0.2, 0.7)),
    (("w", "W"), (0.1, -0.5, 1.0)),
    (("r", "r-", "R"), (0.2, -0.2, 0.5)),
    (("j",), (0.18, 0.4, 0.0)),
    (("t", "d", "n", "l", "L", "t#", "d#"), (0.22, 0.15, 0.0)),
    (("k", "g", "N", "x", "h", "?"), (0.32, 0.0, 0.0)),
    (("aI", "aU", "a", "a#", "A:", "A", "A@", "a2", "aI@", "aI3"), (0.95, 0.1, 0.0)),
    (("eI", "e", "E", "e@", "E2", "E@"), (0.55, 0.45, 0.0)),
    (("i", "i:", "I", "I#", "I2", "i@", "i@3", "y"), (0.3, 0.7, 0.0)),
    (("oU", "O", "O:", "O@", "0", "OI", "o@"), (0.62, -0.35, 0.75)),
    (("u", "u:", "U", "U@", "u@"), (0.25, -0.55, 1.0)),
    (("V",), (0.65, 0.1, 0.0)),
    (("3", "3:", "@", "@2", "@5", "@L", "@r", "a@"), (0.42, 0.0, 0.15)),
]
_VISEME_TABLE = {sym: feats for syms, feats in _VISEMES for sym in syms}


def viseme(phone: str) -> tuple[float, float, float]:
    """Mouth target of an espeak-ng phoneme mnemonic (stress marks removed)."""
    if is_silence(phone):
        return (0.0, 0.0, 0.0)
    if phone in _VISEME_TABLE:
        return _VISEME_TABLE[phone]
    for n in (3, 2, 1):  # longest known prefix: 'aI@' -> 'aI', 'n-' -> 'n'
        if phone[:n] in _VISEME_TABLE:
            return _VISEME_TABLE[phone[:n]]
    return (0.3, 0.0, 0.0)


def viseme_track(phones: list[Segment], times: np.ndarray, smooth_s: float = 0.035) -> np.ndarray:
    """Mouth parameters [len(times), 3] at the given times (seconds): phone targets held over each
    phone, then smoothed (co-articulation) by a Gaussian of `smooth_s` seconds."""
    step = 0.002
    end = max([p.end for p in phones] + [float(times.max()) + 0.1])
    grid = np.arange(0.0, end + step, step)
    target = np.zeros((len(grid), 3), np.float64)
    for p in phones:
        a, b = int(round(p.start / step)), int(round(p.end / step))
        target[a : max(a + 1, b)] = viseme(p.label)
    sigma = smooth_s / step
    radius = int(4 * sigma)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(target, ((radius, radius), (0, 0)), mode="edge")
    smooth = np.stack([np.convolve(padded[:, k], kernel, mode="valid") for k in range(3)], axis=1)
    return np.stack([np.interp(times, grid, smooth[:, k]) for k in range(3)], axis=1)


def loudness_scale(audio: np.ndarray, sample_rate: int, times: np.ndarray, strength: float) -> np.ndarray:
    """Factors [len(times)] for the jaw opening from the speech's loudness: louder speech opens the
    mouth wider. The RMS in an 80 ms Hann window centred on each time, relative to the clip's 95th
    percentile (clipped to 0..1), mapped to 1 - strength + strength * level: 1 at the loudest,
    1 - strength in silence."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"loudness strength {strength}: expected 0..1")
    win = int(0.08 * sample_rate)
    padded = np.pad(np.asarray(audio, np.float64), win)
    centres = np.round(np.asarray(times) * sample_rate).astype(int) + win
    taper = np.hanning(win)
    rms = np.array([np.sqrt(np.mean((padded[c - win // 2 : c - win // 2 + win] * taper) ** 2)) for c in centres])
    level = np.clip(rms / (np.percentile(rms, 95) + 1e-12), 0.0, 1.0)
    return 1.0 - strength + strength * level
