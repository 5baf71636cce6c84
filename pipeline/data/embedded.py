"""The embedded corpus: LRW-layout talking-face clips made offline, the default data.

Each clip is a real photograph (see identities.PHOTOS) speaking a short synthesised phrase of LRW
words with the clip's word in the middle, cut to 29 frames at 25 fps as LRW clips are cut from
running speech. Mouth motion follows the synthesiser's phoneme timing (the jaw opening scaled by
the speech's loudness: data.embedded.loudness_opening), so audio-visual sync is exact and
learnable. Seeded: the same params give the same frames and audio, byte for byte.
Test identities (the last variant of each photo) and test voices are never seen in train/val.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import ffmpeg
from ..runtime import atomic_folder
from . import face_anim, identities, speech, visemes

# Words of the LRW vocabulary (the dataset's 500 labels include all of these).
LRW_WORDS = [
    "ABOUT",
    "ABSOLUTELY",
    "ACCESS",
    "ACCORDING",
    "ACTUALLY",
    "AFTERNOON",
    "AGAINST",
    "ALREADY",
    "AMERICA",
    "ANOTHER",
    "ANSWER",
    "BECAUSE",
    "BEFORE",
    "BELIEVE",
    "BENEFIT",
    "BETWEEN",
    "BUDGET",
    "BUSINESS",
    "CAMPAIGN",
    "CHANGE",
    "CHILDREN",
    "COUNTRY",
    "DECISION",
    "DIFFERENT",
    "ECONOMY",
    "EVERYBODY",
    "FAMILY",
    "FUTURE",
    "GOVERNMENT",
    "HAPPENED",
    "HOUSE",
    "IMPORTANT",
    "LEADERS",
    "MAJORITY",
    "MILLION",
    "MOMENT",
    "NUMBER",
    "PEOPLE",
    "PERHAPS",
    "POLITICAL",
    "PROBLEM",
    "QUESTION",
    "RIGHT",
    "SECURITY",
    "SOMETHING",
    "THINK",
    "WORLD",
    "YEARS",
    "WEATHER",
    "WELFARE",
    "WOMEN",
    "MONEY",
    "NORTH",
    "PLACE",
    "POLICE",
    "POWER",
    "REALLY",
    "SCHOOL",
    "SERIOUS",
    "SOCIAL",
    "SPEECH",
    "SUPPORT",
    "TODAY",
    "UNDER",
]

# (espeak-ng voice, pitch, pitch range). The last two speak only in the test split. Only
# variants whose output is reproducible (no breath noise: not f2, f3, f5) are used.
VOICES = [
    ("en-us+m3", 45, 50),
    ("en-us+f4", 62, 60),
    ("en+m1", 40, 45),
    ("en-gb-x-rp+f4", 66, 55),
    ("en-us+m7", 50, 40),
    ("en-gb-scotland+f1", 60, 60),
    ("en-029+m2", 48, 50),
    ("en-us+f1", 68, 62),
]
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ClipPlan:
    split: str
    index: int  # within the split
    word: str
    number: int  # the LRW-style clip number within word and split (1-based)
    identity: str
    voice: str
    pitch: int
    pitch_range: int
    seed: tuple[int, int, int]

    @property
    def rel_stem(self) -> str:
        return f"lipread_mp4/{self.word}/{self.split}/{self.word}_{self.number:05d}"


def plan_corpus(cfg: dict) -> list[ClipPlan]:
    """Deterministic list of clips for the `data.embedded` params."""
    words = LRW_WORDS[: cfg["n_words"]]
    idents = identities.identity_specs(cfg["identities_per_photo"])
    per = cfg["identities_per_photo"]
    test_ids = [s.name for k, s in enumerate(idents) if k % per == per - 1]
    seen_ids = [s.name for s in idents if s.name not in test_ids]
    plans = []
    for s_idx, split in enumerate(SPLITS):
        rng = np.random.default_rng([cfg["seed"], s_idx, 7919])
        ids = test_ids if split == "test" else seen_ids
        voices = VOICES[-2:] if split == "test" else VOICES[:-2]
        n = cfg[f"{split}_clips"]
        # every identity and every voice of the split gets the same number of clips (+-1), in a
        # seeded order of their own (not tied to the words, which cycle)
        clip_ids, clip_voices = _balanced(rng, len(ids), n), _balanced(rng, len(voices), n)
        counts: dict[str, int] = {}
        for i in range(n):
            word = words[i % len(words)]
            counts[word] = counts.get(word, 0) + 1
            voice, pitch, prange = voices[clip_voices[i]]
            plans.append(
                ClipPlan(
                    split,
                    i,
                    word,
                    counts[word],
                    ids[clip_ids[i]],
                    voice,
                    int(pitch + rng.integers(-6, 7)),
                    prange,
                    (cfg["seed"], s_idx, i),
                )
            )
    return plans


def _balanced(rng: np.random.Generator, k: int, n: int) -> np.ndarray:
    """n choices among k, each taken n // k or n // k + 1 times, in a random order (the extra
    ones go to a random subset)."""
    extra = rng.permutation(k)[: n % k]
    return rng.permutation(np.concatenate([np.repeat(np.arange(k), n // k), extra]).astype(int))


def _phrase(rng: np.random.Generator, word: str, n_side: int) -> tuple[list[str], int]:
    pool = [w for w in LRW_WORDS if w != word]
    before = list(rng.choice(pool, n_side, replace=False))
    after = list(rng.choice([w for w in pool if w not in before], n_side, replace=False))
    return before + [word] + after, n_side


def synthesize_clip_audio(plan: ClipPlan, cfg: dict):
    """Speech for one clip: (audio window, phones and words relative to the window, coverage)."""
    rng = np.random.default_rng(list(plan.seed) + [1])
    duration = cfg["n_frames"] / cfg["fps"]
    sr = cfg["sample_rate"]
    best = None
    for attempt in range(12):
        n_side = 2 + attempt // 4
        words, centre = _phrase(rng, plan.word, n_side)
        rate = int(rng.integers(150, 186))
        sp = speech.synthesize(" ".join(w.lower() for w in words), plan.voice, rate, plan.pitch, plan.pitch_range, sr)
        if len(sp.words) != len(words):
            continue
        target = sp.words[centre]
        t0 = (target.start + target.end) / 2 - duration / 2
        t0 = round(t0 * sr) / sr
        if t0 < 0 or t0 + duration > sp.duration:
            continue
        cov = speech.speech_coverage(sp.phones, t0, t0 + duration)
        if best is None or cov > best[-1]:
            best = (sp, t0, target, cov)
        if cov >= 0.9:
            break
    if best is None:
        raise RuntimeError(f"could not synthesise a phrase long enough for {plan.rel_stem}")
    sp, t0, target, cov = best
    a = int(round(t0 * sr))
    audio = sp.audio[a : a + int(round(duration * sr))].copy()
    peak = float(np.abs(audio).max()) or 1.0
    audio = audio / peak * float(rng.uniform(0.5, 0.8))
    audio += rng.normal(0, 10 ** (-55 / 20), audio.shape).astype(np.float32)  # faint room tone
    shift = lambda seg: {"label": seg.label, "start": round(seg.start - t0, 4), "end": round(seg.end - t0, 4)}
    inside = lambda seg: seg.end > t0 and seg.start < t0 + duration
    return (
        audio.astype(np.float32),
        [shift(p) for p in sp.phones if inside(p)],
        [shift(w) for w in sp.words if inside(w)],
        shift(target),
        cov,
    )


_IDENTITIES: dict[str, identities.Identity] = {}


def _build_one(args) -> dict:
    plan, cfg, out_dir = args
    audio, phones, words, target, coverage = synthesize_clip_audio(plan, cfg)
    fps, n = cfg["fps"], cfg["n_frames"]
    times = (np.arange(n) + 0.5) / fps  # each frame shows the middle of its 40 ms
    segs = [speech.Segment(p["label"], p["start"], p["end"]) for p in phones]
    mouth = visemes.viseme_track(segs, times)
    if cfg["loudness_opening"] > 0:  # each clip its own strength, 0..loudness_opening
        strength = float(np.random.default_rng(list(plan.seed) + [3]).uniform(0.0, cfg["loudness_opening"]))
        mouth[:, 0] *= visemes.loudness_scale(audio, cfg["sample_rate"], times, strength)
    rng = np.random.default_rng(list(plan.seed) + [2])
    frames = face_anim.render_clip(_IDENTITIES[plan.identity], mouth, rng)
    stem = Path(out_dir) / plan.rel_stem
    stem.parent.mkdir(parents=True, exist_ok=True)
    ffmpeg.write_mp4(stem.with_suffix(".mp4"), frames, fps, audio, cfg["sample_rate"])
    word_dur = target["end"] - target["start"]
    stem.with_suffix(".txt").write_text(
        f"Text:  {plan.word}\nSpeaker: {plan.identity}\nVoice: {plan.voice}\nDuration: {word_dur:.2f} seconds\n"
    )
    meta = {
        "clip": plan.rel_stem,
        "identity": plan.identity,
        "voice": plan.voice,
        "pitch": plan.pitch,
        "speech_coverage": round(coverage, 4),
        "word": target,
        "words": words,
        "phones": phones,
        "mouth": np.round(mouth, 4).tolist(),
    }
    stem.with_suffix(".json").write_text(json.dumps(meta))
    return {"split": plan.split, "identity": plan.identity, "voice": plan.voice, "coverage": coverage}


def build(cfg: dict, out_dir: Path, workers: int, progress=None) -> dict:
    """Write the corpus to out_dir (via a temporary folder renamed at the end)."""
    t_start = time.time()
    out_dir = Path(out_dir)
    with atomic_folder(out_dir) as tmp:
        plans = plan_corpus(cfg)
        specs = {s.name: s for s in identities.identity_specs(cfg["identities_per_photo"])}
        _IDENTITIES.clear()
        for name in sorted({p.identity for p in plans}):
            _IDENTITIES[name] = identities.build_identity(specs[name], cfg["size"])
        for word in LRW_WORDS[: cfg["n_words"]]:  # LRW has every split folder for every word
            for split in SPLITS:
                (tmp / "lipread_mp4" / word / split).mkdir(parents=True, exist_ok=True)
        jobs = [(p, cfg, str(tmp)) for p in plans]
        results = []
        with mp.get_context("fork").Pool(max(1, workers)) as pool:
            for r in pool.imap_unordered(_build_one, jobs, chunksize=2):
                results.append(r)
                if progress:
                    progress(1)
        cov = np.array([r["coverage"] for r in results])
        summary = {
            "dataset": "embedded",
            "kind": "embedded",
            "layout": "lrw",
            "root": str(out_dir),
            "clips": {s: sum(r["split"] == s for r in results) for s in SPLITS},
            "identities": {s: sorted({r["identity"] for r in results if r["split"] == s}) for s in SPLITS},
            "voices": {s: sorted({r["voice"] for r in results if r["split"] == s}) for s in SPLITS},
            "speech_coverage": {"min": round(float(cov.min()), 4), "mean": round(float(cov.mean()), 4)},
            "params": cfg,
            "sources": {
                "photos": identities.PHOTOS,
                "speech": "espeak-ng (GPL-3.0) from the espeakng-loader wheel, synthesised offline",
                # the encoder's build decides the clips' bytes (and so every hash downstream)
                "encoder": ffmpeg.build(),
            },
        }
        (tmp / "source.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return {**summary, "build_seconds": round(time.time() - t_start, 2)}  # timing: not in the record
