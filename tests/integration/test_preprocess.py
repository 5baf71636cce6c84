"""The preprocess and gather stages on real clips: crops, failures, resume, the store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import REPO, default_params, lrw_from_corpus, run_cli

from pipeline.io import ffmpeg
from pipeline.io.store import Store
from pipeline.preprocess import crops
from pipeline.preprocess.run import shard_of


def test_bad_clips_are_recorded_and_the_rest_succeeds(processed):
    work, params = processed
    fails = pd.read_parquet(work / "data/processed/lrw/failures.parquet").set_index("clip_id")
    rejects = pd.read_parquet(work / "data/manifests/lrw_rejects.parquet").set_index("clip_id")
    index = pd.read_parquet(work / "data/processed/lrw/index.parquet").set_index("clip_id")
    by_name = lambda table, n: table[[c.endswith(n) for c in table.index]]
    assert by_name(rejects, "00901").reason.iloc[0].startswith("unreadable")  # corrupt: caught by index
    assert by_name(rejects, "00903").reason.iloc[0] == "no audio stream"
    assert len(by_name(fails, "00902")) == 1  # truncated: refused by index or by preprocessing
    assert set(fails.stage) == {"index", "preprocess"} and len(by_name(fails, "00901")) == 1
    assert set(rejects.index) <= set(fails.index)  # every skipped clip is in one table
    assert by_name(fails, "00906").reason.iloc[0].startswith("face lost too long")
    ok = by_name(index, "00904")  # 30 fps: resampled to 25
    assert ok.resampled.iloc[0] and ok.n_frames.iloc[0] == 29
    assert by_name(index, "00905").n_mel.iloc[0] == 93  # 48 kHz stereo: downmixed, resampled
    assert by_name(index, "00907").filled_frames.iloc[0] == 2
    two = by_name(index, "00908")
    assert two.multi_face.iloc[0] and two.max_faces.iloc[0] == 2
    trimmed = by_name(index, "00909")
    assert trimmed.trimmed.iloc[0] and trimmed.n_frames.iloc[0] == 22 and trimmed.n_mel.iloc[0] == 1 + 22 * 640 // 200
    n_good = len(list((work / "LRW/lipread_mp4").glob("*/*/*.mp4"))) - 9
    assert len(index) == n_good + 5
    metrics = json.loads((work / "metrics/gather.json").read_text())
    assert metrics["clips"] == len(index) and metrics["rejected"] == len(fails)


def test_two_face_clip_keeps_one_face(processed):
    work, _ = processed
    store = Store(work / "data/processed/lrw")
    cid = [c for c in store.index.clip_id if c.endswith("00908")][0]
    lm = store.landmarks(cid)
    mouth = lm[:, crops.MOUTH].mean(1)
    # never switched: the mouth stays where the template puts it in every frame
    assert np.abs(mouth - crops.TEMPLATE[2] * 96).max() < 4


def test_crops_are_aligned_across_clips_and_poses(processed):
    work, params = processed
    store = Store(work / "data/processed/lrw")
    size = params["preprocess"]["img_size"]
    points = np.concatenate(
        [np.stack([crops.anchor_points(f) for f in store.landmarks(c)]) for c in store.index.clip_id]
    )
    err = np.abs(points - crops.TEMPLATE * size)
    assert err.mean() < 1.0 and np.percentile(err, 99) < 3.0, (err.mean(), np.percentile(err, 99))
    frames = store.frames(store.index.clip_id[0], 3, 8)
    assert frames.shape == (5, size, size, 3) and frames.dtype == np.uint8


def test_store_matches_manifest_and_alignment(processed):
    work, _ = processed
    store = Store(work / "data/processed/lrw")
    man = pd.read_parquet(work / "data/manifests/lrw.parquet").set_index("clip_id")
    for row in store.index.itertuples():
        assert row.n_mel == 1 + row.n_frames * 640 // 200
        assert row.shard == shard_of(row.clip_id, 2)
        assert row.split == man.loc[row.clip_id, "split"]
        mel = store.mel(row.clip_id)
        assert mel.shape == (row.n_mel, 80) and -4 <= mel.min() and mel.max() <= 4
    with pytest.raises(KeyError, match="not in"):
        store.frames("nope")
    with pytest.raises(IndexError):
        store.frames(store.index.clip_id[0], 20, 40)


def lrw_project(folder, root, stages=("acquire", "index"), **preprocess):
    """A project folder whose params adopt the LRW copy at root; runs the given stages."""
    params = default_params()
    params["data"]["dataset"] = "lrw"
    params["data"]["lrw"]["root"] = str(root)
    params["preprocess"].update(shards=[0], **preprocess)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in stages:
        run_cli(stage.split(), cwd=folder, check=True)
    return params


def test_rerun_after_kill_redoes_only_unfinished_clips(embedded_corpus, tmp_path):
    _, corpus_dir, _ = embedded_corpus
    root = lrw_from_corpus(corpus_dir, tmp_path / "LRW", bad=False)
    lrw_project(tmp_path, root, workers=1)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "preprocess", "--shard", "0"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    # finished clips only: a clip being written is a hidden temporary (.<name>.tmp-<pid>.npz)
    finished = lambda: [p for p in tmp_path.glob("work/preprocess/*/shard-0/*.npz") if not p.name.startswith(".")]
    deadline = time.time() + 120
    while time.time() < deadline and not finished():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(finished())
    assert done >= 1 and done < 7, done
    assert not (tmp_path / "data/processed/lrw/shards/shard-0").exists()
    rerun = run_cli(["preprocess", "--shard", "0", "--log", "re.log"], cwd=tmp_path, check=True)
    assert f"{done} already done" in (tmp_path / "re.log").read_text()
    assert "clips=7" in rerun.stdout
    assert not list(tmp_path.glob("work/preprocess/*/shard-0/*.npz"))  # cleaned after success


def test_shard_fails_when_too_many_clips_are_rejected(embedded_corpus, tmp_path):
    _, corpus_dir, _ = embedded_corpus
    root = lrw_from_corpus(corpus_dir, tmp_path / "LRW", bad=False)
    train = sorted((root / "lipread_mp4").glob("*/train/*.mp4"))
    good, stat = train[0].read_bytes(), train[0].stat()
    frames = ffmpeg.read_frames(train[0])
    ffmpeg.write_mp4(train[0], np.zeros_like(frames), 25, ffmpeg.read_audio(train[0]), 16000)  # no face at all
    lrw_project(tmp_path, root, max_reject_fraction=0.0)
    proc = run_cli(["preprocess", "--shard", "0"], cwd=tmp_path)
    assert proc.returncode == 1
    assert "1 of 7 clips rejected" in proc.stderr and "max_reject_fraction" in proc.stderr and "no face" in proc.stderr
    assert not (tmp_path / "data/processed/lrw/shards/shard-0").exists()
    # the user puts the good file back: the re-run tries the rejected clip again, reuses the rest
    train[0].write_bytes(good)
    os.utime(train[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    proc = run_cli(["preprocess", "--shard", "0", "--log", "re.log"], cwd=tmp_path, check=True)
    assert (
        "6 already done" in (tmp_path / "re.log").read_text()
        and "1 rejected before tried again" in (tmp_path / "re.log").read_text()
    )
    assert "clips=7" in proc.stdout


def test_jpeg_storage_matches_raw_within_codec_noise(embedded_corpus, processed, tmp_path):
    _, corpus_dir, _ = embedded_corpus
    root = lrw_from_corpus(corpus_dir, tmp_path / "LRW", bad=False)
    lrw_project(tmp_path, root, ("acquire", "index", "preprocess --shard 0", "gather"), storage="jpeg", jpeg_quality=95)
    jpeg = Store(tmp_path / "data/processed/lrw")
    raw = Store(processed[0] / "data/processed/lrw")
    cid = jpeg.index.clip_id[0]
    a, b = jpeg.frames(cid, 4, 9).astype(float), raw.frames(cid, 4, 9).astype(float)
    assert a.shape == b.shape and np.abs(a - b).mean() < 3.0
    raw_bytes = sum(f.stat().st_size for f in (processed[0] / "data/processed/lrw/shards").rglob("frames.u8"))
    jpg_bytes = (tmp_path / "data/processed/lrw/shards/shard-0/frames.jpg").stat().st_size
    assert jpg_bytes * len(raw.index) < raw_bytes * len(jpeg.index)  # smaller per clip


def test_empty_shard_is_written_and_gathered(tmp_path):
    from pipeline.io import store as store_mod

    empty = pd.DataFrame(columns=["clip_id", "split", "reason"])
    meta = store_mod.write_shard(tmp_path / "shard-0", iter([]), 96, "raw", empty)
    assert meta["clips"] == 0
    clips = pd.read_parquet(tmp_path / "shard-0" / "clips.parquet")
    assert list(clips.columns[:5]) == ["clip_id", "frame_offset", "n_frames", "mel_offset", "n_mel"]
    clips["shard"] = 0  # what gather does
    store_mod.verify_shard(tmp_path / "shard-0")


def test_mediapipe_start_up_notices_are_dropped_and_other_native_output_kept(capfd):
    """The face mesh's first frame prints native notices (hundreds of lines in a run); they are
    dropped, while anything else written to file descriptor 2 in that window still comes out."""
    from pipeline import mp_solutions

    with mp_solutions.native_notices_dropped():
        os.write(2, b"W0000 00:00:1.0  77 inference_feedback_manager.cc:114] Feedback manager requires...\n")
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(2, b"E0000 a real native error\n")
    with mp_solutions.face_mesh(static_image_mode=False, max_num_faces=1) as mesh:
        for _ in range(2):
            assert mesh.process(np.zeros((64, 64, 3), np.uint8)).multi_face_landmarks is None
    err = capfd.readouterr().err
    assert "a real native error" in err
    assert "inference_feedback_manager" not in err and "XNNPACK" not in err
