"""The embedded corpus: layout, determinism, held-out identities and voices, one face per frame,
speech coverage, and mouth motion in sync with the speech."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from helpers import tiny_params

from pipeline.data import corpus_qc, embedded, identities, layouts, speech, visemes
from pipeline.io import ffmpeg


@pytest.fixture(scope="module")
def corpus(embedded_corpus):
    return embedded_corpus


def clips_of(out):
    return sorted(out.glob("lipread_mp4/*/*/*.mp4"))


def test_layout_is_lrw_and_txt_is_parsed(corpus):
    cfg, out, summary = corpus
    info = layouts.validate_lrw(out)
    assert info["clips"] == {"train": cfg["train_clips"], "val": cfg["val_clips"], "test": cfg["test_clips"]}
    ref = next(layouts.iter_lrw(out))
    txt = layouts.parse_txt(ref.txt_path)
    assert txt["Text"] == ref.word and txt["Duration"].endswith("seconds") and ref.speaker
    record = json.loads((out / "source.json").read_text())
    assert record["clips"] == info["clips"]
    # the encoder's build is recorded: another build makes other bytes, so other hashes downstream
    assert record["sources"]["encoder"] == ffmpeg.build() and record["sources"]["encoder"].startswith("ffmpeg version")
    assert not list(out.parent.glob(".embedded.tmp-*"))


def test_clip_format(corpus):
    cfg, out, _ = corpus
    for clip in clips_of(out):
        info = ffmpeg.probe(clip)
        assert (info.width, info.height, info.fps) == (256, 256, 25.0)
        assert info.decoded_frames == info.header_frames == 29
        assert info.has_audio and info.audio_rate == 16000 and info.audio_channels == 1


def test_seeded_determinism(corpus, tmp_path):
    cfg, out, _ = corpus
    again = tmp_path / "again"
    embedded.build(cfg, again, workers=1)  # other worker count, same result
    for a in clips_of(out):
        b = again / a.relative_to(out)
        assert np.array_equal(ffmpeg.read_frames(a), ffmpeg.read_frames(b))
        assert np.array_equal(ffmpeg.read_audio(a), ffmpeg.read_audio(b))
        assert a.read_bytes() == b.read_bytes()
    other = dict(cfg, seed=cfg["seed"] + 1)
    plan_a, plan_b = embedded.plan_corpus(cfg), embedded.plan_corpus(other)
    assert [p.voice for p in plan_a] != [p.voice for p in plan_b] or [p.identity for p in plan_a] != [
        p.identity for p in plan_b
    ]


def test_test_split_holds_out_identities_and_voices(corpus):
    _, _, summary = corpus
    ids, voices = summary["identities"], summary["voices"]
    seen_ids = set(ids["train"]) | set(ids["val"])
    assert ids["test"] and not set(ids["test"]) & seen_ids
    assert voices["test"] and not set(voices["test"]) & (set(voices["train"]) | set(voices["val"]))
    # a bigger plan uses every identity of its split and both photos everywhere
    plans = embedded.plan_corpus(dict(tiny_params()["data"]["embedded"], train_clips=40))
    train_ids = {p.identity for p in plans if p.split == "train"}
    assert {i.split("-")[0] for i in train_ids} == set(identities.PHOTOS)


def test_identities_and_voices_share_each_split_evenly():
    """Each identity and each voice of a split speaks n // k or n // k + 1 of its clips (an
    earlier plan gave the first variant of each photo three times the clips of the second)."""
    cfg = dict(tiny_params()["data"]["embedded"], train_clips=50, val_clips=9, test_clips=7, identities_per_photo=3)
    plans = embedded.plan_corpus(cfg)
    for split in embedded.SPLITS:
        mine = [p for p in plans if p.split == split]
        # held out: one identity per photo and two voices; seen: the other identities and voices
        pools = {
            "identity": len(identities.PHOTOS) * (1 if split == "test" else cfg["identities_per_photo"] - 1),
            "voice": 2 if split == "test" else len(embedded.VOICES) - 2,
        }
        for key, pool in pools.items():
            counts = Counter(getattr(p, key) for p in mine)
            assert len(counts) == min(pool, len(mine)), (split, key, counts)
            assert max(counts.values()) - min(counts.values()) <= 1, (split, key, counts)
        # not tied to the words, which cycle through the split
        assert len({(p.word, p.identity) for p in mine}) > len({p.word for p in mine}) or len(mine) < 4


@pytest.mark.parametrize("per_photo", range(2, 9))
def test_held_out_identities_look_like_no_seen_identity(per_photo):
    """The test identity of each photo is held out by its look, not only by its name: no train or
    val identity shares its style (with 5 or more per photo one used to)."""
    import dataclasses

    look = lambda s: {k: v for k, v in dataclasses.asdict(s).items() if k != "name"}
    specs = identities.identity_specs(per_photo)
    for photo in identities.PHOTOS:
        mine = [s for s in specs if s.photo == photo]
        assert len(mine) == per_photo
        held_out, seen = mine[-1], mine[:-1]
        assert all(look(s) != look(held_out) for s in seen)
        assert len({json.dumps(look(s), sort_keys=True) for s in mine}) == per_photo  # all distinct


def test_speech_fills_the_clip_with_the_word_in_the_middle(corpus):
    cfg, out, summary = corpus
    assert summary["speech_coverage"]["min"] >= 0.9
    duration = cfg["n_frames"] / cfg["fps"]
    for side in out.glob("lipread_mp4/*/*/*.json"):
        meta = json.loads(side.read_text())
        w = meta["word"]
        assert w["label"].upper() == side.parent.parent.name
        assert abs((w["start"] + w["end"]) / 2 - duration / 2) < 0.03
        phones = [speech.Segment(p["label"], p["start"], p["end"]) for p in meta["phones"]]
        assert speech.speech_coverage(phones, 0, duration) >= 0.9


def test_one_face_per_frame_and_mouth_follows_speech(corpus):
    _, out, _ = corpus
    detector, mesh = corpus_qc.mediapipe_models()
    qcs = []
    for clip in clips_of(out):
        qc = corpus_qc.examine_clip(str(clip), detector, mesh)
        assert qc.faces_per_frame == [1] * 29, f"{clip}: faces per frame {qc.faces_per_frame}"
        assert np.isfinite(qc.mouth_open).all()
        qcs.append(qc)
    at0 = corpus_qc.lagged_correlation(qcs, 0)
    shifted = {lag: corpus_qc.lagged_correlation(qcs, lag) for lag in (-6, -5, -4, -3, -2, 2, 3, 4, 5, 6)}
    assert at0 > 0.3, at0
    # the peak is at lag 0: every copy shifted by 2 or more frames correlates clearly less
    assert max(shifted.values()) < at0 - 0.15, (at0, shifted)


def test_viseme_track_closes_on_bilabials_and_opens_on_vowels():
    phones = [
        speech.Segment("_", 0, 0.1),
        speech.Segment("m", 0.1, 0.25),
        speech.Segment("A:", 0.25, 0.45),
        speech.Segment("_", 0.45, 0.6),
    ]
    track = visemes.viseme_track(phones, np.array([0.05, 0.18, 0.35, 0.55]))
    assert track[2, 0] > 0.8 and track[1, 0] < 0.15 and track[0, 0] < 0.05 and track[3, 0] < 0.1


def test_loudness_opens_the_mouth_wider_by_the_strength_asked():
    sr = 16000
    t = np.arange(sr) / sr
    # a tone at full level for the first half second, at a fifth after it
    audio = np.sin(2 * np.pi * 220 * t) * np.where(t < 0.5, 1.0, 0.2)
    times = np.array([0.25, 0.75, 0.46, 0.5, 0.54])
    assert np.allclose(visemes.loudness_scale(audio, sr, times, 0.0), 1.0)
    loud, quiet, before, at, after = visemes.loudness_scale(audio, sr, times, 0.8)
    assert loud == pytest.approx(1.0) and quiet == pytest.approx(1 - 0.8 + 0.8 * 0.2, abs=0.02)
    # the window is centred on each time: symmetric about the step, halfway at it
    assert before == pytest.approx(1.0, abs=0.01) and after == pytest.approx(quiet, abs=0.01)
    assert quiet + 0.1 < at < loud - 0.1
    with pytest.raises(ValueError, match="loudness strength 1.5"):
        visemes.loudness_scale(audio, sr, times, 1.5)


def test_the_jaw_opening_is_the_visemes_scaled_by_loudness(corpus):
    cfg, out, _ = corpus
    assert cfg["loudness_opening"] > 0
    lowest = []
    for path in sorted(out.glob("lipread_mp4/*/*/*.json")):
        meta = json.loads(path.read_text())
        segs = [speech.Segment(p["label"], p["start"], p["end"]) for p in meta["phones"]]
        phonemic = visemes.viseme_track(segs, (np.arange(cfg["n_frames"]) + 0.5) / cfg["fps"])
        mouth = np.array(meta["mouth"])
        assert np.allclose(mouth[:, 1:], phonemic[:, 1:], atol=1e-4), path  # width and rounding: the phonemes'
        opens = phonemic[:, 0] > 0.05
        ratio = mouth[opens, 0] / phonemic[opens, 0]
        assert (ratio <= 1 + 2e-3).all() and (ratio >= 1 - cfg["loudness_opening"] - 2e-3).all(), path
        assert (mouth[~opens, 0] <= phonemic[~opens, 0] + 1e-4).all(), path  # a closed mouth stays closed
        lowest.append(ratio.min())
    assert min(lowest) < 0.9, lowest  # quiet phonemes of some clip open less than their visemes


def test_synthesis_is_offline_and_timed():
    sp = speech.synthesize("people think about the budget", "en-us+m3", 170)
    assert sp.sample_rate == 16000 and 1.0 < sp.duration < 3.0
    assert [w.label for w in sp.words] == ["people", "think", "about", "the", "budget"]
    assert all(a.start <= b.start for a, b in zip(sp.words, sp.words[1:]))
    assert any(p.label.startswith("p") for p in sp.phones)
    with pytest.raises(ValueError, match="no voice"):
        speech.synthesize("hello", "xx-nonexistent")
