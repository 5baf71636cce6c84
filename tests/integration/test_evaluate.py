"""Evaluation, report, comparison and inference on real data: metrics against scikit-image,
LMD, the evaluate and report stages, `compare`, and `infer` with its error cases."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers import REPO, run_cli
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pipeline.io import ffmpeg
from pipeline.io.store import Store
from pipeline.nets import metrics


def test_psnr_ssim_agree_with_scikit_image_on_random_and_real_frames(processed):
    work, _ = processed
    store = Store(work / "data/processed/lrw")
    real = store.frames(store.index.clip_id[0])[:4]
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8), rng.integers(0, 256, (96, 96, 3), dtype=np.uint8))]
    pairs += [(f, np.clip(f + rng.normal(0, 12, f.shape), 0, 255).astype(np.uint8)) for f in real]
    pairs += [(metrics.mouth(real[0]), metrics.mouth(real[1]))]
    for a, b in pairs:
        want = structural_similarity(
            a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=-1
        )
        assert abs(metrics.ssim(a, b) - want) < 1e-4
        assert abs(metrics.psnr(a, b) - peak_signal_noise_ratio(a, b, data_range=255)) < 1e-4


def test_mouth_sharpness_is_opencvs_laplacian_variance_and_falls_with_blur(processed):
    import cv2

    work, _ = processed
    store = Store(work / "data/processed/lrw")
    mouths = metrics.mouth(store.frames(store.index.clip_id[0])[:4])
    got = metrics.sharpness(mouths)
    for m, value in zip(mouths, got):
        luma = m.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        lap = cv2.Laplacian(luma, cv2.CV_64F, ksize=1)[1:-1, 1:-1]  # interior: no border rule
        assert value == pytest.approx(lap.var(), rel=1e-9)
    blurred = metrics.sharpness(np.stack([cv2.GaussianBlur(m, (0, 0), 1.0) for m in mouths]))
    assert (blurred < 0.6 * got).all()
    assert metrics.sharpness(np.full((1, 20, 20, 3), 128, np.uint8))[0] == 0.0


def test_lmd_is_zero_on_identical_frames_and_grows_with_a_moved_mouth(processed):
    from pipeline.evaluate.landmarks import MouthLandmarks, lmd

    work, _ = processed
    store = Store(work / "data/processed/lrw")
    frames = store.frames(store.index.clip_id[0])[:6]
    marks = MouthLandmarks()
    real = marks.clip(frames)
    assert real.shape == (6, 40, 2) and np.isfinite(real).all()
    assert lmd(marks.clip(frames), real) == (0.0, 6)
    shifted = np.roll(frames, 3, axis=1)  # the whole face 3 px down
    dist, used = lmd(marks.clip(shifted), real)
    assert used == 6 and 2.0 < dist < 4.5


@pytest.fixture(scope="session")
def evaluated(tiny_run):
    """The tiny run of the whole graph (tests/conftest.py: tiny_run): both variants trained for a few
    steps, evaluated, the demo and the report made. Tests here only read it."""
    return tiny_run, yaml.safe_load((tiny_run / "params.yaml").read_text())


def test_evaluate_writes_every_metric_for_every_system(evaluated):
    proj, params = evaluated
    m = json.loads((proj / "metrics/evaluate.json").read_text())
    n_test = params["data"]["embedded"]["test_clips"]
    assert m["lse_network"] == "own_expert" and m["clips"] == n_test and m["flagged_by_sync_check"] == 0
    for system in ("ground_truth", "composite", "memory", "no_memory"):
        for metric in ("psnr", "ssim", "psnr_mouth", "ssim_mouth", "lmd", "sharpness_mouth", "lse_d", "lse_c"):
            assert f"{system}_{metric}" in m, (system, metric)
            # a few training steps make no face the mesh can find: LMD is null there, never made up
            if metric != "lmd" or system in ("ground_truth", "composite"):
                assert np.isfinite(m[f"{system}_{metric}"]), (system, metric)
    assert m["ground_truth_psnr"] == 100.0 and m["ground_truth_ssim"] == pytest.approx(1.0)
    assert m["ground_truth_lmd"] == 0.0
    assert m["composite_psnr_mouth"] < 100 and m["composite_lmd"] > 0
    assert m["ground_truth_sharpness_mouth"] > 0
    table = pd.read_csv(proj / "reports/eval/eval_table.csv")
    assert list(table.system) == ["ground_truth", "composite", "memory", "no_memory"]
    assert set(table.lse_network) == {"own_expert"}
    video = next((proj / "reports/eval/samples").glob("*.mp4"))
    frames = ffmpeg.read_frames(video)
    assert frames.shape[2] == 4 * frames.shape[1]  # ground truth | composite | memory | no_memory
    assert len(ffmpeg.read_audio(video)) > 0

    # cross_audio (pairs: auto): every test clip's face with the next clip's speech, LSE only
    assert m["cross_audio_pairs"] == n_test
    for system in ("ground_truth", "composite", "memory", "no_memory"):
        for metric in ("sharpness_mouth", "lse_d", "lse_c", "offset_abs"):
            assert np.isfinite(m[f"cross_audio_{system}_{metric}"]), (system, metric)
        assert f"cross_audio_{system}_psnr" not in m  # no ground truth for a foreign-audio video
    pairs = pd.read_csv(proj / "reports/eval/per_pair_cross_audio.csv")
    assert (pairs.audio_clip != pairs.video_clip).all() and len(pairs) == n_test * 4
    cross = next((proj / "reports/eval/samples").glob("cross_*.mp4"))
    assert ffmpeg.read_frames(cross).shape[2] == 4 * frames.shape[1]


def test_scoring_in_worker_processes_gives_the_rows_of_one_process(evaluated, tmp_path, monkeypatch):
    """The stage scores clips in one worker process per core; the rows (order and values) must be
    those of scoring every clip in this process, and the sample videos the same files."""
    from pipeline import paths
    from pipeline.errors import PipelineError
    from pipeline.evaluate.run import cross_pairs, score_all, systems_for, test_clips

    proj, params = evaluated
    monkeypatch.chdir(proj)
    store = Store(paths.processed_dir("embedded"))
    clips = test_clips(params, store)[0].head(3)
    pairs = cross_pairs("auto", store, clips)[:2]
    systems = systems_for(params)
    scorer_args = (None, paths.model_dir("sync_expert") / "expert.pt", "cpu", 15)
    got = {}
    for workers in (1, 2):
        samples = tmp_path / f"samples-{workers}"
        samples.mkdir()
        got[workers] = score_all("embedded", store, clips, pairs, systems, scorer_args, samples, 1, workers)
        got[workers] += (sorted(f.name for f in samples.iterdir()),)
    one, two = got[1], got[2]
    assert one[2] == two[2] and len(one[2]) == 2  # one sample video per protocol
    for name in one[2]:  # the same frames, up to the rounding of a generated pixel and the encoder
        a, b = (ffmpeg.read_frames(tmp_path / f"samples-{w}" / name).astype(float) for w in (1, 2))
        assert a.shape == b.shape and np.abs(a - b).mean() < 1.0
    for a, b in ((one[0], two[0]), (one[1], two[1])):
        a, b = pd.DataFrame(a), pd.DataFrame(b)
        assert len(a) == len(b) > 0 and list(a.columns) == list(b.columns)
        text = [c for c in a.columns if a[c].dtype == object]
        assert (a[text] == b[text]).all().all()
        # one torch thread per worker against this process's own: sums may round differently
        np.testing.assert_allclose(
            a.drop(columns=text).to_numpy(float), b.drop(columns=text).to_numpy(float), rtol=1e-3, atol=1e-3
        )
    assert len(one[0]) == len(clips) * 4 and len(one[1]) == len(pairs) * 4  # ground truth, composite, two variants

    # the stage itself scored in one process per core (the tiny run: snakemake --cores 2)
    from pipeline.runtime import available_cores

    n_tasks = params["data"]["embedded"]["test_clips"] * 2  # reconstruction and cross_audio (pairs: auto)
    assert f"in {min(available_cores(), n_tasks)} process(es)" in (proj / "logs/evaluate.log").read_text()

    # a checkpoint that cannot be read stops the stage with its name, from a worker as in-process
    bad = tmp_path / "generator.pt"
    bad.write_bytes(b"not a checkpoint")
    for workers in (1, 2):
        with pytest.raises(PipelineError, match="generator.pt: cannot be read"):
            score_all("embedded", store, clips, pairs, {**systems, "memory": bad}, scorer_args, tmp_path, 0, workers)


def test_fid_of_each_system_against_the_ground_truth_with_a_built_weights_file(evaluated, tmp_path, monkeypatch):
    """evaluate.inception set: each reconstruction row carries its frames' FID features, and the
    table's FID is the Frechet distance of each system's frames to the ground truth's (0 for the
    ground truth itself). The weights are FID's Inception with random values, saved as
    pytorch-fid's file is; the real file is the user's (docs/method.md)."""
    import torch

    from pipeline import paths
    from pipeline.evaluate.run import fid_table, score_all, test_clips
    from pipeline.evaluate.scoring import FID_KEYS
    from pipeline.models.inception import FIDInception

    proj, params = evaluated
    monkeypatch.chdir(proj)
    torch.manual_seed(0)
    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(dict(FIDInception().state_dict()), weights)
    store = Store(paths.processed_dir("embedded"))
    clips = test_clips(params, store)[0].head(1)
    scorer_args = (None, paths.model_dir("sync_expert") / "expert.pt", "cpu", 15)
    systems = {"ground_truth": None, "composite": None}
    rows, _ = score_all("embedded", store, clips, [], systems, scorer_args, tmp_path, 0, 1, weights)
    n = int(clips.n_frames.iloc[0])
    feats = {r["system"]: (r[FID_KEYS[0]], r[FID_KEYS[1]]) for r in rows}
    assert feats["composite"][0].shape == (n, 2048) and feats["composite"][1].shape == (n, 2048)
    table = fid_table(rows)
    assert not any(k in r for r in rows for k in FID_KEYS)  # taken out of the rows: not table columns
    assert table.loc["ground_truth", "fid"] == pytest.approx(0.0, abs=1e-6)
    assert table.loc["composite", "fid"] == pytest.approx(metrics.frechet_distance(*(feats[s][0] for s in systems)))
    assert table.loc["composite", "fid_mouth"] == pytest.approx(
        metrics.frechet_distance(*(feats[s][1] for s in systems))
    )
    assert np.abs(feats["composite"][1] - feats["ground_truth"][1]).max() > 0  # features of other frames


def test_cross_audio_pair_lists_name_clips_by_id_or_tail_and_bad_lines_are_named(processed, tmp_path):
    from pipeline.errors import PipelineError
    from pipeline.evaluate.run import cross_pairs
    from pipeline.io.store import Store

    work, _ = processed
    store = Store(work / "data/processed/lrw")
    test = store.index[store.index.split == "test"].reset_index(drop=True)
    a, b = test.clip_id[0], test.clip_id[1]
    assert cross_pairs(None, store, test) == []
    assert cross_pairs("auto", store, test)[:2] == [(b, a), (test.clip_id[2], b)]
    good = tmp_path / "pairs.txt"
    tail = a.split("/", 1)[1]  # Wav2Lip names LRS2 clips without our 'main/' part: a unique tail is enough
    good.write_text(f"# audio video\n{tail} {b}\n\n{b} {a}\n")
    assert cross_pairs(str(good), store, test) == [(a, b), (b, a)]
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{a} {b}\n{a} NOT/A/CLIP\n")
    with pytest.raises(PipelineError, match=r"bad.txt:2: NOT/A/CLIP"):
        cross_pairs(str(bad), store, test)
    ambiguous = a.rsplit("/", 1)[1]  # the same file name exists in train, val and test
    if (store.index.clip_id.str.rsplit("/", n=1).str[1] == ambiguous).sum() > 1:
        bad.write_text(f"{ambiguous} {b}\n")
        with pytest.raises(PipelineError, match="match several"):
            cross_pairs(str(bad), store, test)
    bad.write_text(f"{a}\n")
    with pytest.raises(PipelineError, match="expected 'AUDIO_CLIP VIDEO_CLIP'"):
        cross_pairs(str(bad), store, test)
    with pytest.raises(PipelineError, match="not found"):
        cross_pairs(str(tmp_path / "missing.txt"), store, test)


def test_report_page_has_every_section(evaluated):
    proj, params = evaluated
    page = (proj / "reports/html/index.html").read_text()
    for text in (
        "Evaluation on the test split",
        "Published figures",
        "not comparable",
        "Training curves",
        "Samples",
        "Sync check",
        "Audio-Lip Memory",
        "own_expert",
        "mediapipe",
        "Cross-audio",
        "cross-audio: ",
    ):
        assert text in page, text
    for png in (
        "curves_sync_expert.png",
        "curves_generator_memory.png",
        "curves_generator_no_memory.png",
        "samples_0.png",
        "offsets_hist.png",
        "memory_word.png",
        "memory_phone.png",
    ):
        assert (proj / "reports/html" / png).stat().st_size > 5000, png
        assert f"src='{png}'" in page
    assert "demo.mp4" in page and (proj / "reports/html/demo.mp4").is_file()
    demo = json.loads((proj / "reports/demo/demo.json").read_text())
    assert demo["face"] != demo["speech"] and demo["frames"] > 0
    # the mouth-follows-speech check ran on every pair (values: the model trained for seconds)
    assert demo["pairs"] == len(demo["per_pair"]) >= 2
    for key in ("mean_mouth_corr_driving", "mean_mouth_corr_original", "mean_input_mouth_corr_driving"):
        assert -1 <= demo[key] <= 1, key
    assert demo["mouth_frames"] == demo["frames"] and "Does the mouth follow the driving speech" in page
    summary = json.loads((proj / "metrics/report.json").read_text())
    assert 0 <= summary["memory_audio_address_info_nats"] <= np.log(params["generator"]["slots"]) + 1e-6
    assert "The causal test" in page and "shuffled across frames" in page and "I(phoneme; strongest slot)" in page


def test_evaluate_writes_the_memory_analysis(evaluated):
    proj, params = evaluated
    m = json.loads((proj / "metrics/memory.json").read_text())
    slots = params["generator"]["slots"]
    assert m["slots"] == slots
    assert (
        m["val_clips"] == params["data"]["embedded"]["val_clips"]
        and m["test_clips"] == params["data"]["embedded"]["test_clips"]
    )
    for split in ("val", "test"):
        for key in ("mouth_l1", "mouth_l1_readout_shuffled", "mouth_l1_readout_zeroed"):
            assert 0 < m[f"{split}_{key}"] < 1, key
        for key in ("within1", "within1_readout_shuffled", "within1_readout_zeroed"):
            assert 0 <= m[f"{split}_{key}"] <= 1, key
        prefix = "" if split == "val" else "test_"
        assert 0 <= m[f"{prefix}audio_address_info_nats"] <= np.log(slots) + 1e-9
        assert 0 <= m[f"{prefix}phoneme_info_nats"] <= m[f"{prefix}phoneme_info_nats_plugin"]
        assert 1 <= m[f"{prefix}slots_used"] <= slots and m[f"{prefix}phoneme_frames"] > 0
        assert m[f"{prefix}store_mse"] >= 0 and m[f"{prefix}store_mse_mean_predictor"] > 0
    # the evaluate run in MLflow carries them
    import mlflow

    client = mlflow.MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=500)
    assert any(
        "memory.val_mouth_l1_readout_shuffled" in r.data.metrics for r in runs if r.data.tags.get("stage") == "evaluate"
    )


def test_compare_prints_runs_side_by_side(evaluated):
    proj, _ = evaluated
    out = run_cli(["compare", "--stage", "train_generator", "--last", "2"], cwd=proj, check=True).stdout
    assert "train_generator-memory" in out and "train_generator-no_memory" in out
    assert "tag.variant" in out and "metric.final_mouth_psnr" in out
    csv = run_cli(["compare", "--stage", "train_generator", "--last", "2", "--format", "csv"], cwd=proj, check=True)
    assert csv.stdout.splitlines()[0].count(",") == 2
    assert csv.stdout.splitlines()[-1].strip() != ""  # no empty last row
    bad = run_cli(["compare", "--last", "0"], cwd=proj)
    assert bad.returncode == 2 and "--last" in bad.stderr and "Traceback" not in bad.stderr


def test_compare_outside_the_project_names_the_missing_store_and_creates_none(tmp_path):
    proc = run_cli(["compare"], cwd=tmp_path, env={"MLFLOW_TRACKING_URI": ""})  # the default store
    assert proc.returncode == 1 and "no MLflow store at" in proc.stderr and str(tmp_path) in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_runs_are_linked_to_the_model_files_they_wrote_and_used(evaluated):
    """The evaluate run names the training run of each checkpoint it scored, and each generator
    run the expert run it trained against: found by the file's SHA-256, which the writing run
    tagged. The files themselves hold no run id or timing (a seeded re-run writes the same bytes)."""
    import mlflow

    from pipeline.tracking import file_sha256

    proj, _ = evaluated
    client = mlflow.MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=500)
    by_id = {r.info.run_id: r for r in runs}
    expert = proj / "models/sync_expert/expert.pt"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=proj, capture_output=True, text=True).stdout.strip()
    evaluations = [r for r in runs if r.data.tags.get("stage") == "evaluate" and r.data.tags.get("git_commit") == head]
    assert evaluations
    evaluations.sort(key=lambda r: r.info.start_time)  # the first is this run's (copies of it come later)
    for variant in ("memory", "no_memory"):
        ckpt = proj / f"models/generator/{variant}/generator.pt"
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        assert "mlflow_run_id" not in state and "train_seconds" not in state["metrics"]
        linked = by_id[evaluations[0].data.tags[f"evaluates.{variant}"]]
        assert linked.data.tags["stage"] == "train_generator" and linked.data.tags["variant"] == variant
        assert linked.data.tags["model_sha256"] == file_sha256(ckpt)
        assert "train_seconds" in linked.data.metrics  # timings live in MLflow
        expert_run = by_id[linked.data.tags["expert_run"]]
        assert expert_run.data.tags["model_sha256"] == file_sha256(expert)
    for name in ("train_sync_expert", "train_generator_memory"):
        assert "train_seconds" not in json.loads((proj / f"metrics/{name}.json").read_text())
    assert "wall_seconds" not in json.loads((proj / "reports/demo/demo.json").read_text())


# ------------------------------------------------------------------ inference
def infer(proj, *args):
    return run_cli(["infer", *args], cwd=proj)


def test_infer_video_and_still_image_and_error_cases(evaluated, tmp_path):
    proj, _ = evaluated
    manifest = pd.read_parquet(proj / "data/manifests/embedded.parquet")
    face = str(proj / manifest.video_path[manifest.split == "test"].iloc[0])
    speech = str(proj / manifest.video_path[manifest.split == "train"].iloc[1])
    out = tmp_path / "out.mp4"
    proc = infer(proj, "--face", face, "--audio", speech, "-o", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "frames/s" in proc.stdout and "0 frames without a face" in proc.stdout
    assert "inference_feedback_manager" not in proc.stderr and "XNNPACK" not in proc.stderr  # mediapipe's chatter
    info = ffmpeg.probe(out)
    speech_len = len(ffmpeg.read_audio(speech)) / 16000
    assert abs(info.decoded_frames / 25 - speech_len) <= 1 / 25 + 1e-6 and info.fps == 25 and info.has_audio
    # outside the face the frame is the input's, up to codec noise: compare with the input
    # re-encoded the same way
    src = ffmpeg.read_frames(face)
    ref = tmp_path / "ref.mp4"
    ffmpeg.write_mp4(ref, src, 25)
    a, b = ffmpeg.read_frames(out)[: len(src)], ffmpeg.read_frames(ref)[: info.decoded_frames]
    n = min(len(a), len(b))
    assert np.abs(a[:n, :40].astype(int) - b[:n, :40]).mean() < 2.0  # the top band: never pasted
    assert np.abs(a[:n].astype(int) - b[:n]).mean() > 0.5  # the mouth region changed

    img = tmp_path / "face.png"
    from PIL import Image

    Image.fromarray(src[0]).save(img)
    out2 = tmp_path / "still.mp4"
    assert infer(proj, "--face", str(img), "--audio", speech, "-o", str(out2)).returncode == 0
    assert ffmpeg.probe(out2).decoded_frames == info.decoded_frames

    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((128, 128, 3), 90, np.uint8)).save(blank)
    silent = tmp_path / "silent.wav"
    ffmpeg.write_wav(silent, np.zeros(16000, np.float32), 16000)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(os.urandom(2000))
    for args, words in (
        ((str(blank), speech), "no face found"),
        ((face, str(silent)), "silent"),
        ((str(garbage), speech), "cannot be read"),
        ((face, str(garbage)), "no readable audio"),
        ((face, str(tmp_path / "missing.wav")), "not found"),
    ):
        bad_out = tmp_path / "bad.mp4"
        proc = infer(proj, "--face", args[0], "--audio", args[1], "-o", str(bad_out))
        assert proc.returncode == 1 and words in proc.stderr, (args, proc.stderr[-500:])
        assert not bad_out.exists() and not list(tmp_path.glob(".bad*"))
        assert " @ 0x" not in proc.stderr and proc.stderr.count(args[1]) <= 1  # ffmpeg's words, the file named once
    proc = infer(proj, "--face", str(tmp_path), "--audio", speech, "-o", str(tmp_path / "x.mp4"))
    assert proc.returncode == 1 and "is a folder" in proc.stderr
    for batch in ("0", "-2", "two"):
        proc = infer(proj, "--face", face, "--audio", speech, "-o", str(tmp_path / "x.mp4"), "--batch", batch)
        assert proc.returncode == 2 and "--batch" in proc.stderr and not (tmp_path / "x.mp4").exists(), batch


def test_inference_uses_the_training_frame_to_mel_mapping():
    """Wav2Lip's inference started its mel window a frame off from its training; here inference
    (nets.generate.mel_windows) and the training dataset cut the same window per frame."""
    from pipeline.io import align
    from pipeline.nets.generate import mel_windows

    rng = np.random.default_rng(0)
    mel = rng.normal(size=(93, 80)).astype(np.float32)
    windows = mel_windows(29, mel)
    for i in align.valid_frames(29, 93):
        assert np.array_equal(windows[i, 0], mel[align.mel_window(i, 29, 93)].T)


class _LoudnessMouth(torch.nn.Module):
    """A stand-in generator for the plumbing test below: the composite of its inputs with a dark
    mouth cavity painted at the crop template's mouth centre, as tall as its mel window is loud.
    A model this simple follows its audio perfectly, so whatever breaks the link between the
    output's mouth and the driving speech is the inference path's doing."""

    img_size = 96

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives generate() a device to read

    def forward(self, masked, reference, mel, lip=None, lip_path=None):
        import cv2

        from pipeline.preprocess.crops import TEMPLATE

        b, t, c, s, _ = masked.shape
        comp = torch.cat([masked[..., : s // 2, :], reference[..., s // 2 :, :]], dim=-2).reshape(b * t, c, s, s)
        level = mel.reshape(b * t, 80, -1)[:, :, 6:10].mean((1, 2))  # the window's middle 40 ms, log-mel in [-4, 4]
        loud = ((level + 2.0) / 2.0).clamp(0, 1)
        centre = (int(TEMPLATE[2, 0] * s), int(TEMPLATE[2, 1] * s))
        out = []
        for k in range(b * t):
            img = np.ascontiguousarray(((comp[k].permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8))
            cv2.ellipse(img, centre, (int(0.12 * s), int(round(12 * float(loud[k])))), 0, 0, 360, (40, 10, 10), -1)
            out.append(torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1)
        return {"audio_frames": torch.stack(out).reshape(b, t, c, s, s)}


def test_infer_mouth_follows_the_driving_speech_and_faceless_frames_pass_through(
    embedded_corpus, tmp_path, monkeypatch
):
    """Inference end to end (tracking, alignment, frame-to-mel windows, paste-back, muxing) with a
    generator whose mouth follows its audio by construction: measured on the written mp4 with the
    face mesh, the mouth's opening correlates with the driving speech and not with the face
    clip's own audio. Shifting the mel windows by 8 frames (a misaligned inference path) breaks
    it, so the check can fail. (Whether a *trained* generator's mouth follows speech is the
    demo stage's check on the default run, reported in reports/demo/demo.json.)"""
    from pipeline import infer as inference
    from pipeline.evaluate import mouth_sync
    from pipeline.nets import generate as gen

    _, corpus_dir, _ = embedded_corpus
    clips = sorted(corpus_dir.glob("lipread_mp4/*/*/*.mp4"))
    face = clips[0]
    word = face.parent.parent.name
    others = [c for c in clips if c.parent.parent.name != word][:3]
    speech = tmp_path / "driving.wav"
    ffmpeg.write_wav(speech, np.concatenate([ffmpeg.read_audio(c, 16000) for c in others]), 16000)
    monkeypatch.setattr(gen, "load_generator", lambda path, device: _LoudnessMouth())
    own = ffmpeg.read_audio(face, 16000)
    own_frames = len(own) // 640

    def measure(out):
        frames = ffmpeg.read_frames(out)
        n = len(frames)
        # the face clip's own audio, arranged as its frames were (forward, then backward)
        own_env = mouth_sync.envelope(
            inference.ping_pong(own[: own_frames * 640].reshape(own_frames, 640), n).ravel(), n
        )
        return mouth_sync.speech_follow(frames, ffmpeg.read_audio(speech, 16000), own_env)

    summary = inference.infer(face, speech, tmp_path / "unused.pt", tmp_path / "out.mp4")
    assert summary["frames_without_face"] == 0 and summary["frames"] > 3 * own_frames - 3
    r = measure(tmp_path / "out.mp4")
    assert r["mouth_frames"] == summary["frames"]
    assert r["mouth_corr_driving"] > 0.25 and r["mouth_corr_driving"] > r["mouth_corr_original"] + 0.15, r

    windows = gen.mel_windows
    monkeypatch.setattr(gen, "mel_windows", lambda n, mel, fps=25.0: np.roll(windows(n, mel, fps), 8, axis=0))
    inference.infer(face, speech, tmp_path / "unused.pt", tmp_path / "shifted.mp4")
    shifted = measure(tmp_path / "shifted.mp4")
    assert shifted["mouth_corr_driving"] < r["mouth_corr_driving"] - 0.15, (r, shifted)

    # frames without a face are copied through unchanged and counted (here 4 blank frames of 29,
    # met twice and again once as the video plays forward, backward, forward under 87 frames)
    monkeypatch.setattr(gen, "mel_windows", windows)
    src = ffmpeg.read_frames(face).copy()
    blank = np.zeros(len(src), bool)
    blank[12:16] = True
    src[blank] = 128
    holed = tmp_path / "holed.mp4"
    ffmpeg.write_mp4(holed, src, 25, own, 16000)
    summary = inference.infer(holed, speech, tmp_path / "unused.pt", tmp_path / "holed_out.mp4")
    expected = inference.ping_pong(blank[:, None], summary["frames"])[:, 0]
    assert summary["frames_without_face"] == int(expected.sum()) == 12
    out = ffmpeg.read_frames(tmp_path / "holed_out.mp4")
    assert np.abs(out[expected].astype(int) - 128).max() <= 8  # nothing pasted: flat grey up to codec noise


def test_cli_help_lists_infer_and_compare():
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    ).stdout
    assert "infer" in out and "compare" in out and "evaluate" in out and "report" in out


def test_mouth_opening_follows_its_own_speech_on_real_clips(embedded_corpus):
    """The measure behind the demo's check: on the corpus's clips (mouths moved by the phonemes
    of their own audio), the opening correlates with the clip's own speech envelope far more than
    with a clip of another word."""
    from pipeline.evaluate import mouth_sync
    from pipeline.infer import read_speech

    _, corpus_dir, _ = embedded_corpus
    clips = sorted(corpus_dir.glob("lipread_mp4/*/*/*.mp4"))
    openings, envelopes, words = [], [], []
    for clip in clips:
        frames = ffmpeg.read_frames(clip)
        openings.append(mouth_sync.mouth_opening(frames))
        envelopes.append(mouth_sync.envelope(read_speech(clip), len(frames)))
        words.append(clip.parent.parent.name)
        assert np.isfinite(openings[-1]).all() and np.ptp(openings[-1]) > 0.05  # a face in every frame; the mouth moves
    own = [mouth_sync.follows(o, e)[0] for o, e in zip(openings, envelopes)]
    other = [
        mouth_sync.follows(openings[i], envelopes[j])[0]
        for i in range(len(clips))
        for j in range(len(clips))
        if words[i] != words[j]
    ]
    assert np.mean(own) > np.mean(other) + 0.15, (own, np.mean(other))
    # the lag search and the envelope are what they claim
    env = mouth_sync.envelope(np.r_[np.zeros(640), np.ones(640)].astype(np.float32), 3)
    assert env.tolist() == [0.0, 1.0, 0.0]
    r, lag = mouth_sync.follows(np.roll(own_env := envelopes[0], 1), own_env)
    assert lag == -1 and r > 0.9
