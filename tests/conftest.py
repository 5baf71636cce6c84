"""Shared fixtures: real clips made with ffmpeg, small params, an isolated MLflow store."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.io import ffmpeg  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _isolated_mlflow(tmp_path_factory):
    """Stages run by the tests log to a store of their own, never the developer's."""
    store = tmp_path_factory.mktemp("mlflow")
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
    yield store
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


def make_clip(path: Path, n_frames: int = 29, fps: float = 25, size: int = 64, audio: bool = True,
              sample_rate: int = 16000, channels: int = 1, seed: int = 0) -> Path:
    """A real H.264/AAC mp4: moving gradient frames and a tone."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames)[:, None, None]
    yy, xx = np.mgrid[0:size, 0:size]
    yy, xx = yy[None], xx[None]
    base = ((xx + yy + 3 * t) % 256).astype(np.uint8)
    frames = np.stack([base, np.roll(base, 7, 2), 255 - base], -1)
    frames = np.clip(frames + rng.integers(0, 8, frames.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not audio:
        ffmpeg.write_mp4(path, frames, fps)
        return path
    dur = n_frames / fps
    ts = np.arange(int(dur * sample_rate)) / sample_rate
    tone = 0.3 * np.sin(2 * np.pi * 220 * ts).astype(np.float32)
    if channels == 1:
        ffmpeg.write_mp4(path, frames, fps, tone, sample_rate)
        return path
    # several channels: mux a multi-channel wav with ffmpeg directly
    wav = path.with_suffix(".wav")
    ffmpeg.write_wav(wav, tone, sample_rate)
    silent = path.with_name(path.stem + "_v.mp4")
    ffmpeg.write_mp4(silent, frames, fps)
    ffmpeg.run_ffmpeg(["-i", str(silent), "-i", str(wav), "-map", "0:v", "-map", "1:a", "-c:v", "copy",
                       "-c:a", "aac", "-ac", str(channels), "-ar", str(sample_rate), str(path)])
    wav.unlink()
    silent.unlink()
    return path


@pytest.fixture
def clip_factory():
    return make_clip


def default_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def tiny_params(**embedded) -> dict:
    p = default_params()
    p["data"]["embedded"].update(train_clips=4, val_clips=1, test_clips=2, n_words=3, **embedded)
    return p


@pytest.fixture
def project(tmp_path):
    """A working folder with the repo's params.yaml and workflow/ (for stages run by the CLI)."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    return tmp_path


def run_cli(args: list[str], cwd: Path, env: dict | None = None, check: bool = False) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"pipeline {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def venv_bin() -> Path:
    return Path(sys.executable).parent


def copy_repo(dest: Path) -> Path:
    """A temporary copy of the repository's tracked and workflow files, as its own git repo."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        src = REPO / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    env = git_env()
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dest, env=env, check=True, capture_output=True)
    return dest


def git_env() -> dict:
    return {**os.environ, "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
            "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.invalid"}
