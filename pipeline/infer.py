"""Inference: lip-sync a face video or photo to a speech file.

    python -m pipeline infer --face FACE --audio AUDIO [--checkpoint CKPT] -o OUT.mp4

FACE: a video (any frame rate: converted to 25 fps) or a still image (repeated); AUDIO: any
file ffmpeg reads (wav/mp3/m4a, or a video's audio track), converted to 16 kHz mono. The output
has one frame per 40 ms of audio: a shorter video plays forward then backward, a longer one is
cut. Faces are tracked with mediapipe over the whole video and aligned exactly as preprocessing
aligns them (pipeline.preprocess.crops, the same smoothing); each frame's mel window is the one
training used (pipeline.io.align, through nets.generate.mel_windows); the generated crops are
warped back and pasted over the lower face with a feathered mask. Frames where the face is not
found are copied through unchanged and counted. Written as H.264 + AAC at 25 fps, atomically.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np

from .errors import PipelineError
from .io import audio as audio_io
from .io import ffmpeg
from .io.align import FPS
from .io.audio import SAMPLE_RATE

log = logging.getLogger("pipeline.infer")
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def _check_file(option: str, path: Path) -> None:
    if path.is_dir():
        raise PipelineError(f"{option} {path}: is a folder; give a file")
    if not path.is_file():
        raise PipelineError(f"{option} {path}: file not found")


def _reason(exc: Exception) -> str:
    return getattr(exc, "reason", None) or str(exc)


def read_face(path: Path, n_frames: int) -> tuple[np.ndarray, bool]:
    """The face frames, n_frames long (looped forward-backward or cut); (frames, is_image)."""
    _check_file("--face", path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        from PIL import Image

        try:
            img = np.asarray(Image.open(path).convert("RGB"))
        except Exception as exc:
            raise PipelineError(f"--face {path}: cannot be read as an image ({exc})") from None
        return np.repeat(img[None], n_frames, axis=0), True
    try:
        frames = ffmpeg.read_frames(path, fps=FPS)
    except Exception as exc:
        raise PipelineError(f"--face {path}: cannot be read as a video ({_reason(exc)})") from None
    if len(frames) == 0:
        raise PipelineError(f"--face {path}: no video frames")
    return ping_pong(frames, n_frames), False


def ping_pong(frames: np.ndarray, n: int) -> np.ndarray:
    """Frame indices 0..T-1, T-2..1, 0.. repeated until n (a video shorter than the audio)."""
    t = len(frames)
    if t == 1:
        return np.repeat(frames, n, axis=0)
    cycle = list(range(t)) + list(range(t - 2, 0, -1))
    return frames[[cycle[i % len(cycle)] for i in range(n)]]


def read_speech(path: Path) -> np.ndarray:
    _check_file("--audio", path)
    try:
        wav = ffmpeg.read_audio(path, SAMPLE_RATE)
    except Exception as exc:
        raise PipelineError(f"--audio {path}: no readable audio stream ({_reason(exc)})") from None
    if len(wav) < 5 * SAMPLES_PER_FRAME:
        raise PipelineError(f"--audio {path}: too short ({len(wav) / SAMPLE_RATE:.2f} s; at least 0.2 s is needed)")
    if np.sqrt(np.mean(wav.astype(np.float64) ** 2)) < 1e-4:
        raise PipelineError(f"--audio {path}: silent (no speech to lip-sync to)")
    return wav


def lower_face_mask(size: int) -> np.ndarray:
    """Feathered paste mask in crop space: the lower face, soft at its edges."""
    import cv2

    m = np.zeros((size, size), np.float32)
    y0, y1, x0, x1 = int(0.52 * size), int(0.96 * size), int(0.14 * size), int(0.86 * size)
    m[y0:y1, x0:x1] = 1.0
    k = max(3, (size // 8) | 1)
    return cv2.GaussianBlur(m, (k, k), 0)


def infer(face: Path, speech: Path, checkpoint: Path, out: Path, batch: int = 32, smooth_window: int = 5) -> dict:
    import cv2
    import torch
    from tqdm import tqdm

    from .nets import generate as gen
    from .nets.generate import load_generator
    from .preprocess import crops
    from .preprocess.faces import FaceTracker, NoFace
    from .runtime import threads

    started = time.time()
    if out.suffix.lower() != ".mp4":
        raise PipelineError(f"-o {out}: the output must be an .mp4 file")
    if batch < 1:
        raise PipelineError(f"--batch {batch}: must be at least 1")
    wav = read_speech(speech)
    n = math.ceil(len(wav) / SAMPLES_PER_FRAME)
    frames, is_image = read_face(face, n)
    torch.set_num_threads(threads())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_generator(checkpoint, device)
    size = model.img_size
    tracker = FaceTracker(max_faces=2)
    try:
        track = tracker.track(frames[:1] if is_image else frames, max_gap=len(frames))
    except NoFace:
        raise PipelineError(f"--face {face}: no face found in any frame") from None
    finally:
        tracker.close()
    landmarks = np.repeat(track.landmarks, n, axis=0) if is_image else track.landmarks
    found = np.repeat(track.found, n) if is_image else track.found
    transforms = crops.align_transforms(landmarks, size, smooth_window)
    crop = crops.warp(frames, transforms, size)
    mel = audio_io.melspectrogram(wav)
    mels = gen.mel_windows(n, mel, FPS)
    refs = crop if is_image else gen.reference_frames(crop)
    generated = np.empty_like(crop)
    for s in tqdm(range(0, n, batch), desc="infer", unit="batch", disable=None):
        generated[s : s + batch] = gen.generate(
            model, crop[s : s + batch], mels[s : s + batch], refs[s : s + batch], batch
        )
    mask = lower_face_mask(size)
    h, w = frames.shape[1:3]
    result = frames.copy()
    for i in np.nonzero(found)[0]:
        m = transforms[i]
        back = cv2.warpAffine(
            generated[i], m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
        )
        alpha = cv2.warpAffine(mask, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)[..., None]
        result[i] = np.clip(frames[i] * (1 - alpha) + back * alpha + 0.5, 0, 255).astype(np.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    ffmpeg.write_mp4(out, result, FPS, wav, SAMPLE_RATE)  # temporary name, renamed when complete
    seconds = time.time() - started
    summary = {
        "frames": n,
        "seconds_of_audio": round(len(wav) / SAMPLE_RATE, 2),
        "frames_without_face": int((~found).sum()),
        "wall_seconds": round(seconds, 1),
        "frames_per_second": round(n / max(seconds, 1e-9), 1),
    }
    return summary


def default_checkpoint() -> Path:
    """models/generator/memory/generator.pt in the current folder or, failing that, in the project
    this package was installed from (so that `infer` also works from another folder)."""
    rel = Path("models/generator/memory/generator.pt")
    home = Path(__file__).resolve().parents[1] / rel
    return home if not rel.is_file() and home.is_file() else rel
