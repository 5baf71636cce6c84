"""What the tests share besides fixtures (tests/conftest.py): real clips made with ffmpeg, params at
test size (the `test` preset), the repository copied as its own git repo, the project's tools
run in a folder. Importing it puts the repository first on sys.path and pins the thread count,
as every `python -m pipeline` does, before numpy and torch load."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.runtime import pin_threads  # noqa: E402

pin_threads()  # stages run in-process compute alike

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from pipeline.io import ffmpeg  # noqa: E402


def make_clip(
    path: Path,
    n_frames: int = 29,
    fps: float = 25,
    size: int = 64,
    audio: bool = True,
    sample_rate: int = 16000,
    channels: int = 1,
    seed: int = 0,
) -> Path:
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
    ffmpeg.run_ffmpeg(
        [
            "-i",
            str(silent),
            "-i",
            str(wav),
            "-map",
            "0:v",
            "-map",
            "1:a",
            "-c:v",
            "copy",
            "-c:a",
            "aac",
            "-ac",
            str(channels),
            "-ar",
            str(sample_rate),
            str(path),
        ]
    )
    wav.unlink()
    silent.unlink()
    return path


def default_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def tiny_params(**embedded) -> dict:
    """The default params at test size (the `test` preset): a 7-clip corpus and a sync expert
    trained for seconds; `embedded` overrides data.embedded keys."""
    from pipeline.config import deep_merge, load_preset

    p = deep_merge(default_params(), load_preset("test"))
    p["data"]["embedded"].update(**embedded)
    return p


def run_cli(args: list[str], cwd: Path, env: dict | None = None, check: bool = False) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=cwd, env=full_env, capture_output=True, text=True
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"pipeline {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def venv_bin() -> Path:
    return Path(sys.executable).parent


def copy_repo(dest: Path) -> Path:
    """A temporary copy of the repository's tracked and workflow files, as its own git repo."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
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
    return {
        **os.environ,
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
    }


def lrw_from_corpus(corpus_dir, root, bad=True):
    """An LRW copy made of embedded clips, plus the troublesome clips preprocessing must survive."""
    src = corpus_dir / "lipread_mp4"
    shutil.copytree(src, root / "lipread_mp4")
    good = sorted((root / "lipread_mp4").glob("*/train/*.mp4"))
    if not bad:
        return root
    train = good[0].parent
    word = train.parent.name
    base = good[0]
    frames = ffmpeg.read_frames(base)
    wav = ffmpeg.read_audio(base)

    def add(name, make):
        target = train / f"{word}_{name}.mp4"
        make(target)
        target.with_suffix(".txt").write_text(f"Text:  {word}\n")

    add("00901", lambda t: t.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(3000)))  # corrupt
    add("00902", lambda t: t.write_bytes(base.read_bytes()[: len(base.read_bytes()) // 2]))  # truncated
    add("00903", lambda t: ffmpeg.write_mp4(t, frames, 25))  # no audio
    add(
        "00904",
        lambda t: ffmpeg.run_ffmpeg(["-i", str(base), "-vf", "fps=30", "-c:v", "libx264", "-c:a", "copy", str(t)]),
    )
    add(
        "00905",
        lambda t: ffmpeg.run_ffmpeg(
            ["-i", str(base), "-c:v", "copy", "-c:a", "aac", "-ar", "48000", "-ac", "2", str(t)]
        ),
    )
    gap = frames.copy()
    gap[8:20] = 0  # 12 faceless frames: longer than max_gap
    add("00906", lambda t: ffmpeg.write_mp4(t, gap, 25, wav, 16000))
    blink = frames.copy()
    blink[10:12] = 0  # 2 faceless frames: filled from neighbours
    add("00907", lambda t: ffmpeg.write_mp4(t, blink, 25, wav, 16000))
    other = ffmpeg.read_frames(good[-1])
    two = np.concatenate([frames, other[: len(frames)]], axis=2)  # two faces side by side
    add("00908", lambda t: ffmpeg.write_mp4(t, two, 25, wav, 16000))
    short = wav[: len(wav) - 7 * 640]  # audio 7 frames shorter than the video: trimmed
    add("00909", lambda t: ffmpeg.write_mp4(t, frames, 25, short, 16000))
    # the first train clip again, in the test split, with its audio delayed by 5 frames (200 ms)
    delayed = np.concatenate([np.zeros(5 * 640, np.float32), wav])[: len(wav)]
    test_dir = train.parent / "test"
    ffmpeg.write_mp4(test_dir / f"{word}_00950.mp4", frames, 25, delayed, 16000)
    (test_dir / f"{word}_00950.txt").write_text(f"Text:  {word}\n")
    # and unchanged in the val split: a val clip the test-size expert has learned, so that
    # sync_check keeps one for the generator tests whatever that expert makes of unseen clips
    val_dir = train.parent / "val"
    shutil.copyfile(base, val_dir / f"{word}_00951.mp4")
    (val_dir / f"{word}_00951.txt").write_text(f"Text:  {word}\n")
    return root


def tiny_expert(**changes) -> dict:
    """Settings for a sync expert small enough to train in seconds in a test, its audio encoder as
    wide as its face encoder; `changes` add to them or override them."""
    return (
        dict(width=0.0625, audio_width=None, batch_size=16, windows_per_clip=4, val_samples=16, warmup_steps=2)
        | changes
    )


def expert_params(params: dict) -> dict:
    """The processed LRW copy's params with a small expert that learns its train clips."""
    p = dict(params)
    learns = tiny_expert(
        width=0.125,
        batch_size=32,
        windows_per_clip=8,
        max_steps=300,
        eval_every=100,
        lr=1e-3,
        augment=False,
        patience=10,
    )
    p["sync_expert"] = {**params["sync_expert"], **learns, "log_every": 1}
    return p


def tool_env(root: Path) -> dict:
    """Environment for the project's tools (snakemake, dvc, python -m pipeline) run in `root`."""
    env = git_env()
    env["PATH"] = f"{venv_bin()}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(root)
    return env


def run_tool(cmd: list[str], root: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a tool of the virtualenv in `root`; on failure the assertion shows its output."""
    exe = [str(venv_bin() / cmd[0]), *cmd[1:]]
    proc = subprocess.run(exe, cwd=root, env={**tool_env(root), **(env or {})}, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def set_params(root: Path, params: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def clone_run(src: Path, dest: Path) -> Path:
    """A copy of a run repository, outputs, caches and metadata included, times preserved."""
    shutil.copytree(src, dest, symlinks=True)
    return dest


def fake_batch(b=2, t=5, size=96, seed=0) -> dict:
    """A seeded random generator batch of b samples of t frames (the lip windows cut from the
    target as the dataset cuts them)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=g) * 2 - 1
    target = r(b, t, 3, size, size)
    masked = target.clone()
    masked[..., size // 2 :, :] = 0
    lip = torch.stack([target[:, [max(0, min(t - 1, k + d)) for d in range(-2, 3)]] for k in range(t)], 1)
    lip = lip.transpose(2, 3).clone()
    lip[..., : size // 2, :] = 0
    return {
        "target": target,
        "masked": masked,
        "reference": r(b, t, 3, size, size),
        "mel": r(b, t, 1, 80, 16) * 4,
        "lip": lip,
    }
