"""`python -m pipeline score`: offsets, LSE and the speaking face of videos no stage has seen."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli

from pipeline.io import ffmpeg


def clips(params: dict) -> tuple[Path, Path, Path]:
    """The processed LRW copy's raw clips: a train clip the expert learnt, the copy of it whose
    audio is 5 frames late, and a clip of another word."""
    root = Path(params["data"]["lrw"]["root"]) / "lipread_mp4"
    original = sorted(root.glob("*/train/*_00001.mp4"))[0]
    delayed = sorted(root.glob(f"{original.parent.parent.name}/test/*_00950.mp4"))[0]
    other = next(p for p in sorted(root.glob("*/train/*_00001.mp4")) if p.parent.parent != original.parent.parent)
    return original, delayed, other


def score(args: list[str], expert: Path, cwd: Path):
    proc = run_cli(["score", *map(str, args), "--expert", str(expert), "--format", "json"], cwd=cwd)
    return proc.returncode, json.loads(proc.stdout), proc


def test_score_finds_the_offset_and_names_every_bad_file(expert_project, tmp_path):
    proj, params = expert_project
    original, delayed, _ = clips(params)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    silent = tmp_path / "short.mp4"
    ffmpeg.write_mp4(silent, ffmpeg.read_frames(original)[:4], 25, ffmpeg.read_audio(original)[: 4 * 640], 16000)
    code, out, proc = score([original, delayed, broken, silent], proj / "models/sync_expert/expert.pt", tmp_path)
    assert code == 1, proc.stderr  # two files could not be scored; the others were
    rows = {Path(r["video"]): r for r in out["results"]}
    assert rows[original]["offset"] == 0 and rows[original]["network"] == "own_expert"
    assert rows[delayed]["offset"] == 5 and rows[delayed]["offset_syncnet_python"] == -5  # audio 5 frames late
    for r in rows.values():
        assert r["faces"] == 1 and r["speaking"] and not r["at_search_edge"] and not r["uncertain"]
        assert len(r["dists"]) == 31 and min(d for d in r["dists"] if d is not None) == pytest.approx(
            r["lse_d"], abs=1e-6
        )
        assert r["dists"][15 + r["offset"]] == pytest.approx(r["lse_d"], abs=1e-6)  # dists run from offset -15 to +15
        assert r["rival_offset"] is None or abs(r["rival_offset"] - r["offset"]) >= 3
        assert r["lse_c"] > 0
    errors = {Path(f["video"]): f["error"] for f in out["failures"]}
    assert "cannot be read" in errors[broken] and "too short" in errors[silent]


def test_the_speaking_face_wins_over_a_larger_more_central_still_one(expert_project, tmp_path):
    """Two faces side by side: a still photograph of another clip's face, larger and nearer the
    centre, and the speaking clip. The face chosen is the one whose lips follow the audio."""
    import cv2

    proj, params = expert_project
    original, _, other = clips(params)
    speaking, wav = ffmpeg.read_frames(original), ffmpeg.read_audio(original)
    h, w = speaking.shape[1:3]
    still = cv2.resize(ffmpeg.read_frames(other)[0], (int(w * 1.25) // 2 * 2, int(h * 1.25) // 2 * 2))
    canvas = np.full((len(speaking), still.shape[0], still.shape[1] + w + 64, 3), 40, np.uint8)
    canvas[:, :, 16 : 16 + still.shape[1]] = still  # nearer the centre than the speaking face
    top = (still.shape[0] - h) // 2
    canvas[:, top : top + h, -w:] = speaking
    video = tmp_path / "two_faces.mp4"
    ffmpeg.write_mp4(video, canvas, 25, wav, 16000)
    expert = proj / "models/sync_expert/expert.pt"
    code, out, proc = score([video], expert, tmp_path)
    assert code == 0, proc.stderr
    (row,) = out["results"]
    assert row["faces"] == 2 and row["face"] == 1 and row["offset"] == 0, row  # faces are numbered left to right
    assert row["face_box"][0] > still.shape[1] and row["face_confidences"][1] > row["face_confidences"][0]
    code, out, _ = score([video, "--faces", "all"], expert, tmp_path)
    assert [r["speaking"] for r in out["results"]] == [False, True]


def test_syncnet_v2_scores_syncnet_pythons_face_crops(expert_project, tmp_path):
    """With syncnet_python's weights (here randomly initialised, in the public file's layout) the
    face is cropped as syncnet_python crops it and every output names that network."""
    import torch

    from pipeline.models.syncnet_v2 import SyncNetV2

    proj, params = expert_project
    original, _, _ = clips(params)
    torch.manual_seed(0)
    weights = tmp_path / "syncnet_v2.model"
    torch.save(dict(SyncNetV2().state_dict()), weights)
    code, out, proc = score([original, "--syncnet-v2", weights], proj / "models/sync_expert/expert.pt", tmp_path)
    assert code == 0, proc.stderr
    (row,) = out["results"]
    assert row["network"] == "syncnet_v2" and len(row["dists"]) == 31 and row["offset"] == -row["offset_syncnet_python"]
