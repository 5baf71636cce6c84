"""Mel spectrograms exactly as Wav2Lip computed them (docs/design.md §4), and audio loading.

16 kHz mono; pre-emphasis 0.97; STFT n_fft 800, hop 200, window 800 (Hann), centred with
reflect padding (Wav2Lip ran librosa 0.7, whose default was reflect; librosa >= 0.10 pads with
zeros, which changes the first and last frames); magnitude; 80 Slaney mel bands 55-7600 Hz;
20*log10(max(1e-5, x)) - 20 dB; symmetric normalisation to [-4, 4] with min_level_db -100.
Result: float32 [T, 80] with T = 1 + n_samples // 200 (80 frames per second).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from .ffmpeg import SAMPLE_RATE

N_FFT = 800
HOP = 200
WIN = 800
N_MELS = 80
FMIN, FMAX = 55.0, 7600.0
PREEMPHASIS = 0.97
REF_LEVEL_DB = 20.0
MIN_LEVEL_DB = -100.0
MAX_ABS_VALUE = 4.0
MEL_FPS = SAMPLE_RATE / HOP  # 80 mel frames per second


@lru_cache(maxsize=1)
def mel_basis() -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX)


def melspectrogram(wav: np.ndarray) -> np.ndarray:
    """Wav2Lip's normalised log-mel spectrogram of 16 kHz mono audio, float32 [T, 80]."""
    import librosa
    from scipy.signal import lfilter

    wav = np.asarray(wav, dtype=np.float64)
    if wav.ndim != 1:
        raise ValueError(f"expected mono audio, got shape {wav.shape}")
    if len(wav) == 0:
        raise ValueError("empty audio")
    emphasised = lfilter([1.0, -PREEMPHASIS], [1.0], wav)
    spec = np.abs(
        librosa.stft(
            emphasised, n_fft=N_FFT, hop_length=HOP, win_length=WIN, window="hann", center=True, pad_mode="reflect"
        )
    )
    mel = mel_basis().astype(np.float64) @ spec
    db = 20.0 * np.log10(np.maximum(1e-5, mel)) - REF_LEVEL_DB
    norm = np.clip(
        2 * MAX_ABS_VALUE * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS_VALUE, -MAX_ABS_VALUE, MAX_ABS_VALUE
    )
    return norm.T.astype(np.float32)


def load_audio(path: str | Path) -> np.ndarray:
    """Any audio or video file's first audio stream as 16 kHz mono float32 (ffmpeg downmixes
    and resamples)."""
    from .ffmpeg import read_audio

    return read_audio(path, SAMPLE_RATE)
