"""Which memory slots each phoneme and each word addresses (the paper's memory analysis).

For every test clip, the memory generator's audio address of each frame (the inference path) is
labelled with the phoneme and the word spoken at the frame's centre: from the synthesiser's
timing on the embedded corpus (the clip's .json beside its .mp4), from the word boundaries of
LRS2's .txt files, and on LRW from the .txt's `Duration:` (the clip's word, centred in the clip;
LRW has no phoneme timing). The mean address per label is a heatmap row; the slot usage entropy
(of the mean address over all frames) says how many slots are in use: log(slots) when all are
used equally, 0 when one takes everything.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from ..io import align
from ..models.memory import usage_entropy
from . import generate as gen


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
        paint(words, [(w["label"] if "label" in w else w.get("word"), w["start"], w["end"])
                      for w in info.get("words", []) if isinstance(w, dict)])
    elif txt.is_file():
        text = txt.read_text(errors="replace")
        rows = re.findall(r"^(\S+)\s+([\d.]+)\s+([\d.]+)\s+[\d.]+\s*$", text, flags=re.M)  # LRS2: WORD START END ASD
        if rows:
            paint(words, [(w, float(s), float(e)) for w, s, e in rows])
        else:  # LRW: the word is centred in the clip and lasts `Duration:` seconds
            m = re.search(r"Duration:\s*([\d.]+)", text)
            word = re.search(r"Text:\s*(\S+)", text)
            if m and word:
                mid, half = n_frames / fps / 2, float(m.group(1)) / 2
                paint(words, [(word.group(1), mid - half, mid + half)])
    return phones, words


@torch.no_grad()
def addresses(model, mel: np.ndarray, n_frames: int) -> np.ndarray:
    """[n_frames, slots]: the audio address of every frame."""
    device = next(model.parameters()).device
    windows = torch.from_numpy(gen.mel_windows(n_frames, mel)).to(device)
    return model.memory.recall(model.encode_audio(windows))["audio_address"].float().cpu().numpy()


def analyse(model, clips, store, video_path_of, min_count: int = 3) -> dict:
    """Mean address per phoneme and per word, slot usage entropies."""
    if model.memory is None:
        raise ValueError("the no_memory variant has no memory to analyse")
    all_addr, by_phone, by_word = [], {}, {}
    for row in clips.itertuples():
        n = int(row.n_frames)
        addr = addresses(model, store.mel(row.clip_id), n)
        phones, words = frame_labels(video_path_of(row), n)
        valid = align.valid_frames(n, int(row.n_mel))
        for i in valid:
            all_addr.append(addr[i])
            if phones[i]:
                by_phone.setdefault(phones[i], []).append(addr[i])
            if words[i]:
                by_word.setdefault(words[i], []).append(addr[i])
    stack = np.stack(all_addr)
    per_frame = -(stack * np.log(stack + 1e-12)).sum(1)

    def table(groups):
        keep = {k: np.mean(v, 0) for k, v in sorted(groups.items()) if len(v) >= min_count}
        return list(keep), (np.stack(list(keep.values())) if keep else np.zeros((0, stack.shape[1])))

    phone_labels, phone_map = table(by_phone)
    word_labels, word_map = table(by_word)
    return {"slots": stack.shape[1], "frames": len(stack),
            "usage_entropy": usage_entropy(torch.from_numpy(stack)), "max_entropy": float(np.log(stack.shape[1])),
            "frame_entropy": float(per_frame.mean()), "slots_used": int((stack.argmax(1)[:, None] ==
                                                                         np.arange(stack.shape[1])).any(0).sum()),
            "phones": phone_labels, "phone_map": phone_map, "words": word_labels, "word_map": word_map}


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
