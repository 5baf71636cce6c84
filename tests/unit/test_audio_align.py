"""The mel recipe against an independent implementation, and the frame <-> mel mapping."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.io import align, audio


def reference_mel(wav: np.ndarray) -> np.ndarray:
    """The recipe of docs/design.md §4 written out with numpy: reflect-padded framing, periodic Hann
    window, rfft, librosa's Slaney mel filter, dB, symmetric normalisation."""
    import librosa

    x = np.append(wav[0], wav[1:] - 0.97 * wav[:-1]).astype(np.float64)  # pre-emphasis
    pad = 400
    x = np.pad(x, pad, mode="reflect")
    n_frames = 1 + (len(x) - 800) // 200
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(800) / 800)  # periodic Hann
    frames = np.stack([x[i * 200 : i * 200 + 800] * window for i in range(n_frames)])
    mag = np.abs(np.fft.rfft(frames, axis=1)).T  # [401, T]
    fb = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600, htk=False, norm="slaney")
    mel = fb.astype(np.float64) @ mag
    db = 20 * np.log10(np.maximum(1e-5, mel)) - 20
    return np.clip(8 * ((db + 100) / 100) - 4, -4, 4).T


@pytest.mark.parametrize("n", [16000, 18560, 12345, 800])
def test_mel_matches_the_recipe_including_edges(n):
    rng = np.random.default_rng(n)
    t = np.arange(n) / 16000
    wav = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.normal(size=n)
    ours = audio.melspectrogram(wav.astype(np.float32))
    ref = reference_mel(wav.astype(np.float32).astype(np.float64))
    assert ours.shape == (1 + n // 200, 80) and ours.dtype == np.float32
    assert np.abs(ours - ref).max() < 1e-5
    assert np.abs(ours[0] - ref[0]).max() < 1e-5 and np.abs(ours[-1] - ref[-1]).max() < 1e-5


def test_zero_padding_would_change_the_edges():
    """librosa >= 0.10 pads with zeros by default: the first frame differs, ours does not."""
    import librosa
    from scipy.signal import lfilter

    rng = np.random.default_rng(0)
    wav = (0.5 * rng.normal(size=16000)).astype(np.float32)
    ours = audio.melspectrogram(wav)
    spec = np.abs(librosa.stft(lfilter([1, -0.97], [1], wav), n_fft=800, hop_length=200, win_length=800))
    db = 20 * np.log10(np.maximum(1e-5, audio.mel_basis() @ spec)) - 20
    zero_pad = np.clip(8 * ((db + 100) / 100) - 4, -4, 4).T
    assert np.abs(zero_pad[0] - ours[0]).max() > 0.1
    assert np.abs(zero_pad[5:-5] - ours[5:-5]).max() < 1e-4


def test_bad_audio_is_refused():
    with pytest.raises(ValueError, match="empty"):
        audio.melspectrogram(np.zeros(0, np.float32))
    with pytest.raises(ValueError, match="mono"):
        audio.melspectrogram(np.zeros((2, 100), np.float32))


def test_mel_start_is_wav2lips_indexing():
    # Wav2Lip: start_idx = int(80 * (start_frame / fps)) for the window starting at start_frame;
    # ours is centred: frame i's window starts at frame i - 2
    for i in range(2, 200):
        assert align.mel_start(i) == int(80.0 * ((i - 2) / 25.0))
    assert align.mel_start(7) == 16 and align.mel_start(2) == 0


def test_roundtrip_and_valid_range():
    for i in range(2, 1000):
        assert align.frame_of_mel(align.mel_start(i)) == i
    n_frames = 29
    n_mel = 1 + n_frames * 640 // 200  # 93
    valid = align.valid_frames(n_frames, n_mel)
    assert valid == range(2, 27)
    for i in valid:
        sl = align.mel_window(i, n_frames, n_mel)
        assert sl.stop - sl.start == 16 and 0 <= sl.start and sl.stop <= n_mel
        assert align.frame_window(i, n_frames) == slice(i - 2, i + 3)
    for bad in (0, 1, 27, 28):
        with pytest.raises(align.WindowError):
            align.mel_window(bad, n_frames, n_mel)
    # audio a little short: the last windows become invalid rather than padded
    assert align.valid_frames(n_frames, 88) == range(2, 25)
    with pytest.raises(align.WindowError, match="mel window"):
        align.mel_window(26, n_frames, 88)


def test_window_covers_its_frames_time_span():
    """Frame i spans [i/25, (i+1)/25); its window [i-2, i+3) frames spans 0.2 s = 16 mel frames,
    and the mel window starts within one mel hop of frame i-2's start."""
    for i in range(2, 100):
        t0 = (i - 2) / 25
        assert abs(align.mel_start(i) / 80 - t0) < 1 / 80
