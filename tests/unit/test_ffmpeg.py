"""The ffmpeg helper: binary choice, probing without ffprobe, reading and writing."""

from __future__ import annotations

import numpy as np

from pipeline.io import ffmpeg


def test_binary_is_found_without_root():
    exe = ffmpeg.ffmpeg_bin()
    proc = ffmpeg.run_ffmpeg(["-version"])
    assert exe and b"ffmpeg version" in proc.stdout


def test_probe_reports_streams_and_counts(tmp_path, clip_factory):
    clip = clip_factory(tmp_path / "a.mp4", n_frames=29)
    info = ffmpeg.probe(clip)
    assert info.readable and info.error is None
    assert (info.width, info.height, info.fps) == (64, 64, 25.0)
    assert info.header_frames == 29 and info.decoded_frames == 29
    assert info.has_audio and info.audio_rate == 16000 and info.audio_channels == 1
    assert abs(info.duration_s - 1.16) < 0.05


def test_probe_stereo_48k_and_30fps(tmp_path, clip_factory):
    clip = clip_factory(tmp_path / "b.mp4", n_frames=30, fps=30, sample_rate=48000, channels=2)
    info = ffmpeg.probe(clip)
    assert info.fps == 30.0 and info.decoded_frames == 30
    assert info.audio_rate == 48000 and info.audio_channels == 2


def test_probe_bad_files(tmp_path, clip_factory):
    missing = ffmpeg.probe(tmp_path / "none.mp4")
    assert not missing.readable and "not found" in missing.error
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 1000 + b"not a video" * 50)
    info = ffmpeg.probe(junk)
    assert not info.readable and info.error
    silent = ffmpeg.probe(clip_factory(tmp_path / "silent.mp4", audio=False))
    assert silent.readable and not silent.has_audio


def test_truncated_clip_header_and_decode_disagree(tmp_path, clip_factory):
    clip = clip_factory(tmp_path / "full.mp4", n_frames=29, size=96)
    data = clip.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])  # moov is at the front (faststart): header survives
    info = ffmpeg.probe(cut)
    assert info.header_frames == 29
    assert not info.readable or info.decoded_frames < 29


def test_read_roundtrip(tmp_path, clip_factory):
    clip = clip_factory(tmp_path / "r.mp4", n_frames=12, fps=25, sample_rate=48000, channels=2)
    frames = ffmpeg.read_frames(clip)
    assert frames.shape == (12, 64, 64, 3) and frames.dtype == np.uint8
    assert ffmpeg.read_frames(clip, size=32).shape == (12, 32, 32, 3)
    audio = ffmpeg.read_audio(clip, 16000)  # downmixed and resampled
    assert audio.dtype == np.float32 and abs(len(audio) - 12 / 25 * 16000) < 2000
    tone = np.abs(np.fft.rfft(audio[2000:6000]))
    assert abs(np.argmax(tone) * 16000 / 4000 - 220) < 10


def test_write_is_bit_exact(tmp_path, clip_factory):
    a = clip_factory(tmp_path / "x1.mp4", seed=3)
    b = clip_factory(tmp_path / "x2.mp4", seed=3)
    assert a.read_bytes() == b.read_bytes()
    assert not list(tmp_path.glob(".*tmp*"))


def test_stereo_is_averaged_to_mono_as_wav2lip_loads_it(tmp_path):
    """Wav2Lip's load_wav (librosa.load) averages the channels, (L + R) / 2; ffmpeg's `-ac 1`
    would weigh each by 0.707 (3 dB louder). Channels that differ show which one ran."""
    import wave

    t = np.arange(16000) / 16000
    left = (0.5 * np.sin(2 * np.pi * 220 * t) * 32767).astype(np.int16)
    right = (0.2 * np.sin(2 * np.pi * 530 * t) * 32767).astype(np.int16)
    path = tmp_path / "stereo.wav"
    with wave.open(str(path), "wb") as wf:
        wf.setnchannels(2)
        wf.setsampwidth(2)
        wf.setframerate(16000)
        wf.writeframes(np.stack([left, right], 1).tobytes())
    got = ffmpeg.read_audio(path)
    want = (left.astype(np.float32) / 32768 + right.astype(np.float32) / 32768) / 2
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert not np.allclose(got, want * np.sqrt(2), atol=1e-3)  # not ffmpeg's downmix
