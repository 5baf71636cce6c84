"""ffmpeg: which binary, probing without ffprobe, reading and writing clips.

The system `ffmpeg` is used when it is on PATH, else the static one that imageio-ffmpeg ships
(no root needed). imageio-ffmpeg has no ffprobe, so `probe()` reads what it needs from
`ffmpeg -i` (streams, rates, duration) plus the MP4 sample tables (the header's frame count),
and counts decoded frames by decoding.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import PipelineError
from ..runtime import atomic_file

SAMPLE_RATE = 16000  # the project's audio rate (Wav2Lip's mel is defined at it); io/audio.py uses it too


@lru_cache(maxsize=1)
def ffmpeg_bin() -> str:
    found = os.environ.get("PIPELINE_FFMPEG") or shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError:  # pragma: no cover - it is a declared dependency
        raise PipelineError("no ffmpeg: install Debian's ffmpeg or the imageio-ffmpeg package") from None
    return imageio_ffmpeg.get_ffmpeg_exe()


@lru_cache(maxsize=1)
def build() -> str:
    """Which ffmpeg encodes and decodes here: the first line of `ffmpeg -version` (e.g. 'ffmpeg
    version 5.1.8-0+deb12u1'). Builds differ in their H.264/AAC output, so a corpus made with one
    differs byte for byte from one made with another (and so do the figures trained on it)."""
    proc = subprocess.run([ffmpeg_bin(), "-hide_banner", "-version"], capture_output=True, text=True)
    first = (proc.stdout or proc.stderr).strip().splitlines()
    line = first[0] if first else "unknown"
    return re.sub(r"\s+Copyright.*$", "", line)


class FFmpegError(PipelineError):
    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message  # ffmpeg's own words, without the file name


def ffmpeg_reason(stderr: str) -> str:
    """ffmpeg's last error lines, without its '[demuxer @ 0x55...]' prefixes, the repeated file
    name and repeated messages: 'Error opening input: Invalid data found when processing input'."""
    seen, kept = set(), []
    for line in stderr.strip().splitlines()[-4:]:
        line = re.sub(r"^\[[^\]]*@ 0x[0-9a-f]+\]\s*", "", line.strip())
        if not line or line.startswith("Error opening input file"):
            continue
        detail = line.split(": ", 1)[-1]
        if detail not in seen:
            seen.add(detail)
            kept.append(line)
    return "; ".join(kept) or "unknown error"


def run_ffmpeg(args: list[str], *, input_bytes: bytes | None = None, what: str = "") -> subprocess.CompletedProcess:
    cmd = [ffmpeg_bin(), "-hide_banner", "-nostdin", "-y", *args]
    proc = subprocess.run(cmd, input=input_bytes, capture_output=True)
    if proc.returncode != 0:
        reason = ffmpeg_reason(proc.stderr.decode(errors="replace"))
        raise FFmpegError(f"ffmpeg failed{' on ' + what if what else ''}: {reason}", reason)
    return proc


# ----------------------------------------------------------------------------- probing


@dataclass
class Probe:
    path: str
    readable: bool
    error: str | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    duration_s: float | None = None
    header_frames: int | None = None  # from the container's sample table (MP4) or duration * fps
    decoded_frames: int | None = None  # counted by decoding (None when not checked)
    has_audio: bool = False
    audio_rate: int | None = None
    audio_channels: int | None = None


_DURATION = re.compile(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")
_VIDEO = re.compile(r"Stream #\S+.*?: Video: .*?(\d{2,5})x(\d{2,5})")
_FPS = re.compile(r"Stream #\S+.*?: Video: .*?([\d.]+)(k?) fps")
_AUDIO = re.compile(r"Stream #\S+.*?: Audio: [^,]+, (\d+) Hz, ([^,]+)")
_FRAME = re.compile(r"frame=\s*(\d+)")
_CHANNELS = {"mono": 1, "stereo": 2, "2.1": 3, "quad": 4, "5.0": 5, "5.1": 6, "7.1": 8}


def probe(path: str | Path, decode: bool = True) -> Probe:
    """Streams, rate, duration, header and (optionally) decoded frame counts of one clip.

    Never raises for a bad clip: `readable=False` and `error` say what is wrong.
    """
    path = str(path)
    if not os.path.isfile(path):
        return Probe(path, readable=False, error="file not found")
    args = [ffmpeg_bin(), "-hide_banner", "-nostdin", "-threads", "1", "-i", path]
    if decode:
        args += ["-map", "0:v:0?", "-threads", "1", "-f", "null", "-"]
    proc = subprocess.run(args, capture_output=True)
    err = proc.stderr.decode(errors="replace")
    info = Probe(path, readable=True)
    m = _DURATION.search(err)
    if m:
        h, mi, s = m.groups()
        info.duration_s = int(h) * 3600 + int(mi) * 60 + float(s)
    m = _VIDEO.search(err)
    if m:
        info.width, info.height = int(m.group(1)), int(m.group(2))
    m = _FPS.search(err)
    if m:
        info.fps = float(m.group(1)) * (1000 if m.group(2) else 1)
    m = _AUDIO.search(err)
    if m:
        info.has_audio = True
        info.audio_rate = int(m.group(1))
        layout = m.group(2).strip()
        count = re.match(r"(\d+) channels", layout)
        info.audio_channels = _CHANNELS.get(layout) or (int(count.group(1)) if count else None)
    if info.width is None:
        info.readable = False
        last = [ln for ln in err.strip().splitlines() if ln.strip()][-1:] or ["no output"]
        info.error = "no video stream" if m or info.duration_s else f"unreadable: {last[0].strip()}"
        return info
    if decode:
        frames = _FRAME.findall(err)
        if proc.returncode != 0 or not frames:
            info.readable = False
            info.error = "decoding failed: " + (err.strip().splitlines() or ["?"])[-1].strip()
            return info
        info.decoded_frames = int(frames[-1])
        if re.search(r"(Invalid NAL|error while decoding|Invalid data found|partial file)", err, re.I):
            info.error = "decoder reported errors"
    info.header_frames = mp4_video_sample_count(path)
    if info.header_frames is None and info.duration_s and info.fps:
        info.header_frames = int(round(info.duration_s * info.fps))
    return info


def mp4_video_sample_count(path: str | Path) -> int | None:
    """Number of samples (frames) the first video track of an MP4/MOV declares, or None."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            moov = _find_box(fh, 0, size, b"moov")
            if moov is None:
                return None
            for trak in _iter_boxes(fh, *moov, name=b"trak"):
                mdia = _find_box(fh, *trak, b"mdia")
                if mdia is None:
                    continue
                hdlr = _find_box(fh, *mdia, b"hdlr")
                if hdlr is None:
                    continue
                fh.seek(hdlr[0] + 8)
                if fh.read(4) != b"vide":
                    continue
                minf = _find_box(fh, *mdia, b"minf")
                stbl = minf and _find_box(fh, *minf, b"stbl")
                stsz = stbl and _find_box(fh, *stbl, b"stsz")
                if not stsz:
                    return None
                fh.seek(stsz[0] + 8)
                return struct.unpack(">I", fh.read(4))[0]
    except (OSError, struct.error):
        return None
    return None


def _iter_boxes(fh, start: int, end: int, name: bytes | None = None):
    """Yield (payload_start, payload_end) of the boxes between start and end."""
    pos = start
    while pos + 8 <= end:
        fh.seek(pos)
        header = fh.read(8)
        if len(header) < 8:
            return
        box_size, box_type = struct.unpack(">I4s", header)
        head = 8
        if box_size == 1:
            box_size = struct.unpack(">Q", fh.read(8))[0]
            head = 16
        elif box_size == 0:
            box_size = end - pos
        if box_size < head or pos + box_size > end:
            return
        if name is None or box_type == name:
            yield pos + head, pos + box_size
        pos += box_size


def _find_box(fh, start: int, end: int, name: bytes):
    return next(_iter_boxes(fh, start, end, name), None)


# ----------------------------------------------------------------------------- reading


def read_frames(path: str | Path, size: int | None = None, fps: float | None = None) -> np.ndarray:
    """Decode all frames as uint8 RGB [T, H, W, 3] (optionally resized square / resampled)."""
    info = probe(path, decode=False)
    if not info.readable:
        raise FFmpegError(f"{path}: {info.error}")
    w, h = (size, size) if size else (info.width, info.height)
    vf = []
    if fps:
        vf.append(f"fps={fps}")
    if size:
        vf.append(f"scale={size}:{size}:flags=area")
    args = ["-threads", "1", "-i", str(path), "-map", "0:v:0"]
    if vf:
        args += ["-vf", ",".join(vf)]
    args += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    proc = run_ffmpeg(args, what=str(path))
    frame_bytes = w * h * 3
    n = len(proc.stdout) // frame_bytes
    return np.frombuffer(proc.stdout[: n * frame_bytes], np.uint8).reshape(n, h, w, 3)


def read_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio stream as float32 mono at sample_rate: resampled by ffmpeg, its
    channels averaged, as librosa.load and Wav2Lip's load_wav do (ffmpeg's own downmix, `-ac 1`,
    weighs stereo by 0.707 each: 3 dB louder than Wav2Lip's mel)."""
    args = [
        "-threads",
        "1",
        "-i",
        str(path),
        "-map",
        "0:a:0",
        "-ar",
        str(sample_rate),
        "-f",
        "f32le",
        "-acodec",
        "pcm_f32le",
        "-",
    ]
    proc = run_ffmpeg(args, what=str(path))
    samples = np.frombuffer(proc.stdout, np.float32)
    channels = _output_channels(proc.stderr.decode(errors="replace"))
    if channels is None or len(samples) % channels:
        raise FFmpegError(f"{path}: cannot tell the audio's channel count from ffmpeg's output", "channels")
    if channels == 1:
        return samples.copy()
    return samples.reshape(-1, channels).mean(axis=1)


_OUTPUT_AUDIO = re.compile(r"Output #0.*?Stream #\S+: Audio: [^,]+, \d+ Hz, ([^,\n]+)", re.S)


def _output_channels(stderr: str) -> int | None:
    """The channel count of the audio stream ffmpeg wrote (its 'Output #0' section)."""
    m = _OUTPUT_AUDIO.search(stderr)
    if not m:
        return None
    layout = m.group(1).strip()
    count = re.match(r"(\d+) channels", layout)
    return _CHANNELS.get(layout) or (int(count.group(1)) if count else None)


def read_av(
    path: str | Path, width: int, height: int, fps: float | None = None, sample_rate: int = SAMPLE_RATE
) -> tuple[np.ndarray, np.ndarray]:
    """Frames (uint8 RGB [T, H, W, 3]) and audio (float32 mono at sample_rate) in one ffmpeg run.

    The caller knows the size from the manifest, so no probe is needed: one process per clip."""
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as td:
        wav = Path(td) / "a.f32"
        args = ["-threads", "1", "-noautorotate", "-i", str(path), "-map", "0:v:0"]  # the manifest's size, unrotated
        if fps:
            args += ["-vf", f"fps={fps}"]
        args += [
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "pipe:1",
            "-map",
            "0:a:0",
            "-ac",
            "1",
            "-ar",
            str(sample_rate),
            "-f",
            "f32le",
            "-acodec",
            "pcm_f32le",
            str(wav),
        ]
        proc = run_ffmpeg(args, what=str(path))
        audio = np.fromfile(wav, np.float32)
    frame_bytes = width * height * 3
    if len(proc.stdout) % frame_bytes:
        raise FFmpegError(f"{path}: decoded video is not {width}x{height}")
    frames = np.frombuffer(proc.stdout, np.uint8).reshape(-1, height, width, 3)
    return frames, audio


# ----------------------------------------------------------------------------- writing


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> None:
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(str(path), "wb") as wf:
        wf.setnchannels(1)
        wf.setsampwidth(2)
        wf.setframerate(sample_rate)
        wf.writeframes(pcm.tobytes())


def write_mp4(
    path: str | Path,
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int = SAMPLE_RATE,
    crf: int = 18,
) -> None:
    """H.264 (yuv420p) + AAC mono mp4, bit-exact for the same input; written atomically."""
    path = Path(path)
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    t, h, w, _ = frames.shape
    with tempfile.TemporaryDirectory() as td, atomic_file(path, keep_suffix=True) as tmp:
        args = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", f"{fps}", "-i", "-"]
        if audio is not None:
            wav = Path(td) / "a.wav"
            write_wav(wav, audio, sample_rate)
            args += ["-i", str(wav)]
        args += ["-map", "0:v:0"] + (["-map", "1:a:0"] if audio is not None else [])
        args += [
            "-c:v",
            "libx264",
            "-preset",
            "medium",
            "-crf",
            str(crf),
            "-pix_fmt",
            "yuv420p",
            "-threads",
            "1",
            "-x264-params",
            "threads=1",
            "-map_metadata",
            "-1",
            "-fflags",
            "+bitexact",
            "-flags:v",
            "+bitexact",
        ]
        if audio is not None:
            args += ["-c:a", "aac", "-b:a", "64k", "-ar", str(sample_rate), "-ac", "1", "-flags:a", "+bitexact"]
        args += ["-movflags", "+faststart", "-f", "mp4", str(tmp)]
        run_ffmpeg(args, input_bytes=frames.tobytes(), what=str(path))
