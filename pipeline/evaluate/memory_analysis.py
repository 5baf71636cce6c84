"""Does the Audio-Lip Memory carry the lip-sync? The memory generator measured on whole clips.

- The causal test: the clips generated with the audio-addressed readout as is, shuffled across
  the frames of each generated batch (a seeded permutation without fixed points: every frame reads
  another frame's readout) and zeroed; mouth L1 (in [0, 1] units, frames 2..n-3) and the expert's
  sync for each (clips found within +-1 frame, mean confidence). A decoder that ignores the memory
  gives the same numbers three times.
- Address information: I(address; frame) in nats, H(mean address) - mean H(address): 0 when
  every frame gets the same address, log(slots) when each frame reads its own slot; the slots
  that are some frame's strongest; the effective slots per frame (exp of its address entropy);
  the mean pairwise cosine of the projected audio queries.
- Phoneme specificity: I(phoneme; strongest slot) in nats over the frames labelled with the
  phoneme spoken at their centre (the embedded corpus' synthesiser timing), less the mean of the
  same figure with the labels shuffled (the plug-in estimate's bias with few frames per cell);
  the mean address per phoneme as a heatmap, rows grouped by mouth shape (viseme), and per word
  (the embedded corpus' timing; word boundaries where an LRS2 .txt has them, which only its
  pretrain set's do; LRW's word centred in the clip). Silence frames do not count as phonemes.
- What the features carry: the share of the projected lip features' variance, and of the audio
  queries', that lies within clips (a lip feature that tells speakers apart and not mouth shapes
  has a share near 0, and no audio query can learn its address).
- Store fidelity: MSE between the lip-addressed readout and the projected lip feature, beside the
  MSE of predicting every projected lip feature by their mean (a memory that stores anything
  beats it); KL(lip address || audio address) on matching frames and on shuffled ones.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import numpy as np
import torch

from ..data.speech import is_silence
from ..io import align
from ..nets import generate as gen
from ..nets.metrics import mouth
from ..nets.sync import sync_of

READOUTS = ("as_is", "shuffled", "zeroed")


# ------------------------------------------------------------------ information measures
def entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    return -(p * np.log(np.clip(p, 1e-300, None))).sum(axis)


def address_information(addresses: np.ndarray) -> float:
    """I(slot; frame) in nats for addresses [frames, slots] (rows are distributions over slots,
    frames equally likely): H(mean address) - mean H(address)."""
    a = np.asarray(addresses, dtype=np.float64)
    return float(max(0.0, entropy(a.mean(0)) - entropy(a).mean()))


def effective_slots(addresses: np.ndarray) -> float:
    """Mean over frames of exp(entropy of the frame's address): how many slots a frame reads."""
    return float(np.exp(entropy(addresses)).mean())


def slots_used(addresses: np.ndarray) -> int:
    """Slots that are the strongest of at least one frame."""
    return int(len(np.unique(np.asarray(addresses).argmax(1))))


def mean_pairwise_cosine(vectors: np.ndarray) -> float:
    v = np.asarray(vectors, dtype=np.float64)
    v = v / np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-12, None)
    n = len(v)
    if n < 2:
        return float("nan")
    total = v.sum(0)  # the sum of all n^2 cosines is |sum of the unit vectors|^2: no n x n matrix
    return float((total @ total - (v * v).sum()) / (n * (n - 1)))


def plugin_information(x: np.ndarray, y: np.ndarray) -> float:
    """I(x; y) in nats of two discrete sequences, from their joint histogram."""
    _, xi = np.unique(x, return_inverse=True)
    _, yi = np.unique(y, return_inverse=True)
    joint = np.zeros((xi.max() + 1, yi.max() + 1))
    np.add.at(joint, (xi, yi), 1.0)
    joint /= joint.sum()
    px, py = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / (px @ py)[nz])).sum())


def label_information(labels, slots, shuffles: int = 50, seed: int = 0) -> tuple[float, float]:
    """(I(label; slot) less its mean under shuffled labels, the plug-in I): the shuffles measure
    the plug-in estimate's upward bias, which with a few frames per (label, slot) cell is of the
    order of the information itself."""
    labels, slots = np.asarray(labels), np.asarray(slots)
    if len(labels) < 2:
        return 0.0, 0.0
    raw = plugin_information(labels, slots)
    rng = np.random.default_rng(seed)
    bias = float(np.mean([plugin_information(rng.permutation(labels), slots) for _ in range(shuffles)]))
    return max(0.0, raw - bias), raw


# ------------------------------------------------------------------ the causal test
@contextlib.contextmanager
def readout(model, mode: str):
    """Generate with the audio-addressed readout `mode` (as_is, shuffled, zeroed) inside the block."""
    if mode not in READOUTS:
        raise ValueError(f"readout mode must be one of {READOUTS}, got {mode!r}")
    old = model.readout_mode
    model.readout_mode = mode
    try:
        yield model
    finally:
        model.readout_mode = old


def sync_and_mouth(model, expert, store, clips, modes=READOUTS) -> dict:
    """Per readout mode: mouth L1 over the clips' frames 2..n-3, the fraction of clips the expert
    finds within +-1 frame of sync, the mean |offset| and the mean confidence."""

    out = {}
    for mode in modes:
        l1_sum, pixels, offsets, confs = 0.0, 0, [], []
        with readout(model, mode):
            for row in clips.itertuples():
                frames, mel = store.frames(row.clip_id), store.mel(row.clip_id)
                # a clip in one batch (up to 256 frames): the shuffle moves every frame's readout
                fake = gen.generate(
                    model,
                    frames,
                    gen.mel_windows(len(frames), mel),
                    gen.reference_frames(frames),
                    batch=len(frames) if len(frames) <= 256 else 128,
                )
                valid = slice(2, len(frames) - 2)
                diff = np.abs(mouth(fake[valid]).astype(np.float64) - mouth(frames[valid]))
                l1_sum, pixels = l1_sum + float(diff.sum()), pixels + diff.size
                offset, conf, _ = sync_of(expert, fake, mel)
                offsets.append(offset)
                confs.append(conf)
        offsets = np.array(offsets)
        out[mode] = {
            "mouth_l1": l1_sum / max(1, pixels) / 255.0,
            "within1": float((np.abs(offsets) <= 1).mean()),
            "abs_offset": float(np.abs(offsets).mean()),
            "confidence": float(np.mean(confs)),
        }
    return out


# ------------------------------------------------------------------ addresses and the store
def frame_labels(video_path: Path, n_frames: int, fps: float = 25.0) -> tuple[list, list]:
    """(phoneme or None, word or None) at each frame's centre time."""
    t = (np.arange(n_frames) + 0.5) / fps
    phones, words = [None] * n_frames, [None] * n_frames
    meta = video_path.with_suffix(".json")
    txt = video_path.with_suffix(".txt")

    def paint(target, segments):
        for label, start, end in segments:
            for i in np.nonzero((t >= start) & (t < end))[0]:
                target[i] = label

    if meta.is_file():  # the embedded corpus: the synthesiser's events
        info = json.loads(meta.read_text())
        paint(phones, [(p["label"], p["start"], p["end"]) for p in info.get("phones", [])])
        paint(
            words,
            [
                (w["label"] if "label" in w else w.get("word"), w["start"], w["end"])
                for w in info.get("words", [])
                if isinstance(w, dict)
            ],
        )
    elif txt.is_file():
        text = txt.read_text(errors="replace")
        rows = re.findall(
            r"^(\S+)\s+([\d.]+)\s+([\d.]+)\s+-?[\d.]+\s*$", text, flags=re.M
        )  # LRS2 pretrain: WORD START END ASD
        if rows:
            paint(words, [(w, float(s), float(e)) for w, s, e in rows])
        else:  # LRW: the word is centred in the clip and lasts `Duration:` seconds
            m = re.search(r"Duration:\s*([\d.]+)", text)
            word = re.search(r"Text:\s*(\S+)", text)
            if m and word:
                mid, half = n_frames / fps / 2, float(m.group(1)) / 2
                paint(words, [(word.group(1), mid - half, mid + half)])
    return phones, words


def lip_inputs(frames: np.ndarray, centres) -> torch.Tensor:
    """The lip encoder's 5-frame windows (upper half zeroed) centred on `centres`: [N, 3, 5, S, S]."""
    x = gen.to_model(frames)  # [n, 3, S, S]
    s = x.shape[-1]
    wins = torch.stack([x[c - 2 : c + 3] for c in centres]).transpose(1, 2).clone()
    wins[..., : s // 2, :] = 0.0
    return wins


@torch.no_grad()
def clip_memory(model, frames: np.ndarray, mel: np.ndarray, n_mel: int) -> dict:
    """One clip's valid frames: audio queries (projected), audio and lip addresses, the projected
    lip features and their lip-addressed readouts."""
    n = len(frames)
    valid = [i for i in align.valid_frames(n, n_mel) if 2 <= i < n - 2]
    device = next(model.parameters()).device
    mels = torch.from_numpy(gen.mel_windows(n, mel)[valid]).to(device)
    audio = model.encode_audio(mels)
    mem = model.memory(audio, model.lip(lip_inputs(frames, valid).to(device)))
    query = model.memory.audio_norm(model.memory.audio_proj(audio))  # what the addressing compares
    return {
        "frames": valid,
        "query": query.float().cpu().numpy(),
        **{k: mem[k].float().cpu().numpy() for k in ("audio_address", "lip_address", "lip_proj", "lip_read")},
    }


def within_clip_fraction(parts: list) -> float:
    """The share of the variance of features [frames, D] that lies within clips (`parts`, one
    array per clip): near 1 when they change with each frame, near 0 when they only tell the clips
    (their speaker) apart."""
    allf = np.concatenate(parts).astype(np.float64)
    total = ((allf - allf.mean(0)) ** 2).sum()
    within = sum((((p.astype(np.float64) - p.mean(0)) ** 2).sum()) for p in parts)
    return float(within / total) if total > 0 else 0.0


def kl_rows(p: np.ndarray, q: np.ndarray) -> float:
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    return float((p * (np.log(p + 1e-8) - np.log(q + 1e-8))).sum(1).mean())


def analyse(model, clips, store, video_path_of, min_count: int = 3) -> dict:
    """Addresses, phoneme and word tables and store fidelity over every valid frame of `clips`."""
    if model.memory is None:
        raise ValueError("the no_memory variant has no memory to analyse")
    parts, phones, words = [], [], []
    for row in clips.itertuples():
        frames = store.frames(row.clip_id)
        got = clip_memory(model, frames, store.mel(row.clip_id), int(row.n_mel))
        ph, wd = frame_labels(video_path_of(row), len(frames))
        phones += [ph[i] for i in got["frames"]]
        words += [wd[i] for i in got["frames"]]
        parts.append(got)
    cat = {
        k: np.concatenate([p[k] for p in parts])
        for k in ("query", "audio_address", "lip_address", "lip_proj", "lip_read")
    }
    addr = cat["audio_address"]
    strongest = addr.argmax(1)
    labelled = [i for i, p in enumerate(phones) if p and not is_silence(p)]  # speech vs silence is loudness
    phone_info, phone_info_raw = label_information([phones[i] for i in labelled], strongest[labelled])
    shuffled = np.random.default_rng(0).permutation(len(addr))
    proj = cat["lip_proj"]

    def table(labels, order=None):
        groups: dict = {}
        for i, lab in enumerate(labels):
            if lab:
                groups.setdefault(lab, []).append(addr[i])
        keep = [k for k in (order(groups) if order else sorted(groups)) if len(groups[k]) >= min_count]
        return keep, (np.stack([np.mean(groups[k], 0) for k in keep]) if keep else np.zeros((0, addr.shape[1])))

    phone_labels, phone_map = table(phones, by_viseme)
    word_labels, word_map = table(words)
    return {
        "frames": int(len(addr)),
        "slots": int(addr.shape[1]),
        "audio_address_info_nats": address_information(addr),
        "lip_address_info_nats": address_information(cat["lip_address"]),
        "slots_used": slots_used(addr),
        "effective_slots": effective_slots(addr),
        "query_cosine": mean_pairwise_cosine(cat["query"]),
        "phoneme_info_nats": phone_info,
        "phoneme_info_nats_plugin": phone_info_raw,
        "phoneme_frames": len(labelled),
        "lip_within_clip": within_clip_fraction([p["lip_proj"] for p in parts]),
        "query_within_clip": within_clip_fraction([p["query"] for p in parts]),
        "store_mse": float(((cat["lip_read"] - proj) ** 2).mean()),
        "store_mse_mean_predictor": float(((proj - proj.mean(0)) ** 2).mean()),
        "align_kl": kl_rows(cat["lip_address"], addr),
        "align_kl_shuffled": kl_rows(cat["lip_address"], addr[shuffled]),
        "phones": phone_labels,
        "phone_map": phone_map,
        "words": word_labels,
        "word_map": word_map,
    }


def by_viseme(groups: dict) -> list:
    """Phoneme labels ordered by the mouth shape they make (open, width, round), then by name."""
    from ..data.visemes import viseme

    return sorted(groups, key=lambda p: (viseme(p), p))


def heatmap(labels: list, matrix: np.ndarray, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, max(2.5, 0.22 * len(labels) + 1.2)))
    im = ax.imshow(matrix, aspect="auto", cmap="magma", interpolation="nearest")
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xlabel("memory slot")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="mean address weight")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------ the evaluate stage's part
KEYS = (
    "audio_address_info_nats",
    "lip_address_info_nats",
    "slots_used",
    "effective_slots",
    "query_cosine",
    "lip_within_clip",
    "query_within_clip",
    "phoneme_info_nats",
    "phoneme_info_nats_plugin",
    "phoneme_frames",
    "store_mse",
    "store_mse_mean_predictor",
    "align_kl",
    "align_kl_shuffled",
    "frames",
)


def memory_report(model, expert, store, splits: dict, video_path_of, out_dir: Path) -> dict:
    """metrics/memory.json's content for `splits` ({name: clips}, val first): the causal test as
    `<split>_mouth_l1[_readout_<mode>]`, `<split>_within1[...]`, `<split>_confidence[...]`, and
    the address and store measures, unprefixed for val and `test_`-prefixed for test; heatmaps
    of the mean address per phoneme and per word of the last split in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict = {"slots": int(model.memory.slots)}
    res = None
    for split, clips in splits.items():
        causal = sync_and_mouth(model, expert, store, clips)
        for mode, values in causal.items():
            suffix = "" if mode == "as_is" else f"_readout_{mode}"
            for k, v in values.items():
                metrics[f"{split}_{k}{suffix}"] = v
        base = causal["as_is"]["mouth_l1"]
        metrics[f"{split}_mouth_l1_shuffled_rise"] = causal["shuffled"]["mouth_l1"] / base - 1.0 if base > 0 else None
        metrics[f"{split}_clips"] = len(clips)
        res = analyse(model, clips, store, video_path_of)
        prefix = "" if split == "val" else f"{split}_"
        metrics.update({f"{prefix}{k}": res[k] for k in KEYS})
    for key, title in (("phone", "phoneme (rows grouped by mouth shape)"), ("word", "word")):
        if res is not None and res[f"{key}s"]:
            heatmap(res[f"{key}s"], res[f"{key}_map"], f"mean audio address per {title}", out_dir / f"memory_{key}.png")
    return metrics
