"""LSE-D and LSE-C (docs/design.md §6): SyncNet's lip-sync error, as syncnet_python and Wav2Lip score it.

Reproduces `SyncNetInstance.evaluate` (joonson/syncnet_python) in the form Wav2Lip's scripts run
it (evaluation/scores_LSE/SyncNetInstance_calc_scores.py, calculate_scores_LRS.py: batch 20,
vshift 15, whole frames resized to 224x224, no face tracking):
- ffmpeg writes the frames as JPEG (`-threads 1 -f image2 %06d.jpg`, default quality) and the
  audio as 16 kHz mono s16 wav (`-async 1 -ac 1 -vn -acodec pcm_s16le -ar 16000`);
- frames are read with cv2 (BGR), resized to 224x224 (bilinear), raw 0-255 values; audio: 13
  MFCC from python_speech_features on the int16 samples (100 steps/s, 4 per video frame);
- with L = min(frames, samples // 640), windows i = 0 .. L-6 (the original stops one short of
  the last full window): frames i..i+4 and MFCC steps 4i..4i+19;
- for each shift s = -15..15, the Euclidean distance (eps 1e-6, as pairwise_distance) between
  video feature i and audio feature i+s, zero vectors where i+s leaves the clip, averaged over i;
  min_dist = the minimum of those means (LSE-D), confidence = median - minimum (LSE-C).
Offset sign, ours: offset = the best s, so **offset > 0 means the audio lags the video** (audio
delayed by 3 frames -> +3), as in the sync_check stage; syncnet_python prints the opposite sign
(`vshift - argmin`), kept here as `offset_syncnet_python`.
Differences: the video is assumed to be 25 fps (as the original does); ffmpeg is the project's.

Without `syncnet_v2.model` the project's own expert scores instead, on its own inputs (aligned
crops' lower halves, mel windows) with sync_check's procedure (cosine distance over every audio
window, pipeline.nets.sync). Every result names its network, so no number is mixed up with published ones.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.nn import functional as F

from ..errors import PipelineError
from ..io import ffmpeg
from ..io.align import FPS
from ..io.audio import SAMPLE_RATE
from ..models.syncnet_v2 import SyncNetV2, layout_problems

SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
MFCC_PER_FRAME = 4  # 10 ms steps per 40 ms frame
MFCC_STEPS = 20  # 0.2 s, the audio of 5 frames
WINDOW = 5
SIZE = 224


def load_syncnet_v2(path: str | Path, device: torch.device | str = "cpu") -> SyncNetV2:
    """The public `syncnet_v2.model` (flat name -> tensor dict) in eval mode, without gradients."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(
            f"{path}: SyncNet weights not found (syncnet_python's download_model.sh fetches syncnet_v2.model)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise PipelineError(f"{path}: cannot be read as PyTorch weights ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and any(isinstance(k, str) and k.startswith("__S__.") for k in state):
        state = {k[len("__S__.") :]: v for k, v in state.items()}  # a saved SyncNetInstance
    model = SyncNetV2()
    problems = layout_problems(model, state)
    if problems:
        raise PipelineError(
            f"{path}: not syncnet_python's SyncNet (syncnet_v2.model) layout: " + "; ".join(problems[:6])
        )
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class VideoInputs(NamedTuple):
    frames: np.ndarray  # uint8 [N, 224, 224, 3], BGR, after the JPEG round trip
    mfcc: np.ndarray  # float64 [13, M], 100 steps per second
    n_samples: int  # audio samples at 16 kHz


def video_inputs(mp4_path: str | Path, tmpdir: str | Path) -> VideoInputs:
    """Frames and MFCC of one video, extracted exactly as syncnet_python does (in a fresh
    folder under tmpdir, removed afterwards)."""
    import cv2
    import python_speech_features
    from scipy.io import wavfile

    work = tempfile.mkdtemp(prefix="lse-", dir=tmpdir)
    try:
        ffmpeg.run_ffmpeg(
            ["-i", str(mp4_path), "-threads", "1", "-f", "image2", os.path.join(work, "%06d.jpg")], what=str(mp4_path)
        )
        wav = os.path.join(work, "audio.wav")
        try:
            ffmpeg.run_ffmpeg(
                [
                    "-i",
                    str(mp4_path),
                    "-async",
                    "1",
                    "-ac",
                    "1",
                    "-vn",
                    "-acodec",
                    "pcm_s16le",
                    "-ar",
                    str(SAMPLE_RATE),
                    wav,
                ],
                what=str(mp4_path),
            )
        except ffmpeg.FFmpegError:  # an ffmpeg without the deprecated -async: its filter equivalent
            ffmpeg.run_ffmpeg(
                [
                    "-i",
                    str(mp4_path),
                    "-af",
                    "aresample=async=1",
                    "-ac",
                    "1",
                    "-vn",
                    "-acodec",
                    "pcm_s16le",
                    "-ar",
                    str(SAMPLE_RATE),
                    wav,
                ],
                what=str(mp4_path),
            )
        names = sorted(glob.glob(os.path.join(work, "*.jpg")))
        if not names:
            raise PipelineError(f"{mp4_path}: no video frames")
        frames = np.stack([cv2.resize(cv2.imread(n), (SIZE, SIZE)) for n in names])
        rate, audio = wavfile.read(wav)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if rate != SAMPLE_RATE or len(audio) < 400:
        raise PipelineError(f"{mp4_path}: no usable audio ({len(audio)} samples at {rate} Hz)")
    mfcc = np.asarray(python_speech_features.mfcc(audio, rate)).T  # int16 samples, as the original passes them
    return VideoInputs(frames, mfcc, len(audio))


@torch.no_grad()
def features(
    model: SyncNetV2, frames: np.ndarray, mfcc: np.ndarray, n_samples: int | None = None, batch: int = 20
) -> tuple[torch.Tensor, torch.Tensor]:
    """(video [W, 1024], audio [W, 1024]) features of windows 0 .. L-6, L = min(frames, samples // 640)."""
    if n_samples is None:
        n_samples = (mfcc.shape[1] + 1) * SAMPLE_RATE // 100  # M = 4L - 1 steps for L frames of audio
    length = min(len(frames), n_samples // SAMPLES_PER_FRAME)
    n_windows = length - WINDOW
    if n_windows < 1:
        raise PipelineError(
            f"clip too short for SyncNet: {len(frames)} frames, {n_samples} audio samples "
            f"(needs {WINDOW + 1} frames of both)"
        )
    device = next(model.parameters()).device
    video = torch.from_numpy(np.ascontiguousarray(frames))  # uint8 [N, H, W, 3]; float per batch
    audio = torch.from_numpy(mfcc).float()[None]  # [1, 13, M]
    v_out, a_out = [], []
    for s in range(0, n_windows, batch):
        idx = range(s, min(n_windows, s + batch))
        v = torch.stack([video[i : i + WINDOW].permute(3, 0, 1, 2) for i in idx]).float()  # [B, 3, 5, H, W]
        a = torch.stack([audio[:, :, MFCC_PER_FRAME * i : MFCC_PER_FRAME * i + MFCC_STEPS] for i in idx])
        v_out.append(model.forward_lip(v.to(device)).float().cpu())
        a_out.append(model.forward_aud(a.to(device)).float().cpu())
    return torch.cat(v_out), torch.cat(a_out)


def offset_scores(video_feat: torch.Tensor, audio_feat: torch.Tensor, search: int = 15):
    """(offset, min_dist, confidence, dists): dists[k] is the mean distance at shift s = k - search
    (video window i against audio window i + s, zero-padded); offset > 0: audio lags video."""
    n = len(video_feat)
    padded = F.pad(audio_feat, (0, 0, search, search))
    dists = torch.stack([F.pairwise_distance(video_feat, padded[k : k + n]) for k in range(2 * search + 1)])
    mean = dists.mean(1).numpy().astype(np.float64)  # float32 means, as the original's
    k = int(np.argmin(mean))
    return k - search, float(mean[k]), float(np.median(mean) - mean[k]), mean


def lse_clip(
    model: SyncNetV2,
    frames_bgr224: np.ndarray,
    mfcc: np.ndarray,
    search: int = 15,
    batch: int = 20,
    n_samples: int | None = None,
):
    """(offset, min_dist, confidence, dists) of one clip by SyncNet (see the module docstring)."""
    v, a = features(model, frames_bgr224, mfcc, n_samples, batch)
    return offset_scores(v, a, search)


def scores(network: str, offset: int, min_dist: float, confidence: float, dists) -> dict:
    """A scorer's result: the offset in both signs, LSE-D, LSE-C and the mean distance at every
    offset, from -search to +search in this project's sign (None where too few windows overlap)."""
    return {
        "network": network,
        "offset": offset,
        "offset_syncnet_python": -offset,
        "min_dist": min_dist,
        "confidence": confidence,
        "dists": [None if np.isnan(d) else round(float(d), 6) for d in dists],
    }


class SyncNetV2Scorer:
    """LSE of a video file by the original SyncNet: `scorer(path) -> dict` (mel is ignored)."""

    network = "syncnet_v2"

    def __init__(self, weights: str | Path, device: torch.device | str = "cpu", search: int = 15, batch: int = 20):
        self.model = load_syncnet_v2(weights, device)
        self.search, self.batch = search, batch

    def __call__(self, video: str | Path, mel: np.ndarray | None = None) -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            frames, mfcc, n_samples = video_inputs(video, tmp)
        offset, dmin, conf, dists = lse_clip(self.model, frames, mfcc, self.search, self.batch, n_samples)
        return scores(self.network, offset, dmin, conf, dists)


class OwnExpertScorer:
    """The same offset/confidence search by the project's sync expert, on the video's frames
    (which must be the project's aligned face crops: the expert never saw anything else) and
    the clip's mel (computed from the video's audio when not given). The search: pipeline.nets.sync."""

    network = "own_expert"

    def __init__(self, expert_path: str | Path, device: torch.device | str = "cpu", search: int = 15):
        from ..nets.expert import load_expert

        if not Path(expert_path).is_file():
            raise PipelineError(
                f"{expert_path}: sync expert not found (run train_sync_expert, or give "
                f"syncnet_python's syncnet_v2.model)"
            )
        self.model = load_expert(expert_path, device)
        self.search = search

    def __call__(self, video: str | Path, mel: np.ndarray | None = None) -> dict:
        from ..io.audio import melspectrogram

        frames = ffmpeg.read_frames(video)
        if mel is None:
            mel = melspectrogram(ffmpeg.read_audio(video, SAMPLE_RATE))
        return self.score_frames(frames, mel, str(video))

    def score_frames(self, frames: np.ndarray, mel: np.ndarray, what: str = "clip") -> dict:
        """The same on aligned crops already in memory (uint8 [N, S, S, 3]) and their mel."""
        import cv2

        from ..nets.sync import clip_embeddings, estimate_offset, offset_distances

        size = self.model.img_size
        if frames.shape[1:3] != (size, size):
            frames = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames])
        try:
            a, v = clip_embeddings(self.model, frames, mel, float(FPS))
        except ValueError as exc:
            raise PipelineError(f"{what}: {exc}") from None
        dists = offset_distances(a, v, self.search)
        if np.isnan(dists).all():
            raise PipelineError(f"{what}: too few windows for the offset search")
        offset, conf, dmin = estimate_offset(dists, self.search)
        return scores(self.network, offset, dmin, conf, dists[::-1])  # by offset, as SyncNet v2's


def make_scorer(
    syncnet_v2: str | Path | None, expert_path: str | Path, device: torch.device | str = "cpu", search: int = 15
):
    """SyncNet v2 when its weights are given, else the project's own expert."""
    if syncnet_v2:
        return SyncNetV2Scorer(syncnet_v2, device, search)
    return OwnExpertScorer(expert_path, device, search)


def score_videos(
    paths,
    network: str = "auto",
    syncnet_v2_path: str | Path | None = None,
    expert_path: str | Path | None = None,
    device: torch.device | str = "cpu",
    search: int = 15,
) -> dict:
    """Per-clip rows and LSE-D (mean min_dist) / LSE-C (mean confidence), with the network's name.

    network: "syncnet_v2" (needs syncnet_v2_path), "own_expert", or "auto" (SyncNet v2 when
    syncnet_v2_path is given, else the own expert, by default models/sync_expert/expert.pt)."""
    if network not in ("auto", "syncnet_v2", "own_expert"):
        raise PipelineError(f"network must be auto, syncnet_v2 or own_expert, got {network!r}")
    if network == "syncnet_v2" and not syncnet_v2_path:
        raise PipelineError("network syncnet_v2 needs the path of syncnet_v2.model")
    if expert_path is None:
        from .. import paths as project_paths

        expert_path = project_paths.model_dir("sync_expert") / "expert.pt"
    scorer = make_scorer(None if network == "own_expert" else syncnet_v2_path, expert_path, device, search)
    rows = [{"video": str(p), **scorer(p)} for p in paths]
    if not rows:
        raise PipelineError("no video to score")
    return {
        "network": scorer.network,
        "clips": rows,
        "lse_d": float(np.mean([r["min_dist"] for r in rows])),
        "lse_c": float(np.mean([r["confidence"] for r in rows])),
    }
