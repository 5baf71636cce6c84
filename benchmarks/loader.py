"""Sync-expert training samples/s: the project's SyncDataset over the store against a Wav2Lip-
style loader built here on the same clips (one jpg per frame on disk; per sample: read 5 jpgs,
load the wav, compute the whole clip's mel, cut the window), with the same DataLoader settings.
Prints samples/s in total and per worker, and the ratio (goal >= 20x)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from pipeline.data.datasets import SyncDataset  # noqa: E402
from pipeline.io import audio as audio_io  # noqa: E402
from pipeline.io import ffmpeg  # noqa: E402
from pipeline.io.align import mel_window  # noqa: E402
from pipeline.io.store import Store  # noqa: E402


class Wav2LipStyle(Dataset):
    """What Wav2Lip's color_syncnet_train.py Dataset does per sample, on these clips."""

    def __init__(self, folders: list[Path], size: int, length: int):
        self.folders, self.size, self.length = folders, size, length

    def __len__(self):
        return self.length

    def __getitem__(self, idx):
        import cv2

        rng = np.random.default_rng(idx)
        folder = self.folders[int(rng.integers(len(self.folders)))]
        n = len(list(folder.glob("*.jpg")))
        i = int(rng.integers(2, n - 2))
        window = []
        for f in range(i - 2, i + 3):
            img = cv2.imread(str(folder / f"{f}.jpg"))
            window.append(cv2.resize(img, (self.size, self.size)))
        wav = audio_io.load_audio(folder / "audio.wav")
        mel = audio_io.melspectrogram(wav)
        m = mel[mel_window(i, n, len(mel))]
        x = np.concatenate(window, axis=2)[self.size // 2 :] / 255.0
        return torch.from_numpy(x.transpose(2, 0, 1).astype(np.float32)), torch.from_numpy(m.T[None].copy())


def rate(ds, workers: int, batch: int, batches: int) -> float:
    from torch.utils.data import RandomSampler

    sampler = RandomSampler(ds, replacement=True, num_samples=10**7, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(ds, batch_size=batch, num_workers=workers, sampler=sampler, persistent_workers=workers > 0)
    it = iter(loader)
    next(it)  # start-up excluded
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        n += len(next(it)[0])
    return n / (time.perf_counter() - start)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default="data/processed/embedded")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=20)
    args = ap.parse_args()
    store = Store(args.store)
    ours = SyncDataset(store, splits=("train",), seed=0)
    clips = list(ours.clips.clip_id[:40])
    size = int(store._shard(int(store.row(clips[0]).shard)).size)
    with tempfile.TemporaryDirectory() as td:
        import cv2

        folders = []
        for k, cid in enumerate(clips):  # Wav2Lip's preprocessed layout: crops as jpgs + audio.wav
            folder = Path(td) / f"{k:03d}"
            folder.mkdir()
            for f, img in enumerate(store.frames(cid)):
                cv2.imwrite(str(folder / f"{f}.jpg"), img[..., ::-1])
            ffmpeg.write_wav(folder / "audio.wav", _audio_of(cid), 16000)
            folders.append(folder)
        theirs = Wav2LipStyle(folders, size, length=10**6)
        subset = SyncDataset(store, splits=("train",), clip_ids=clips, seed=0)
        base = rate(theirs, args.workers, args.batch, args.batches)
        mine = rate(subset, args.workers, args.batch, args.batches * 10)
    w = max(1, args.workers)
    print(f"clips: {len(clips)}, crops {size} px, batch {args.batch}, {args.workers} DataLoader workers")
    print(f"Wav2Lip-style loader: {base:8.1f} samples/s ({base / w:.1f} per worker)")
    print(f"SyncDataset (store):  {mine:8.1f} samples/s ({mine / w:.1f} per worker)")
    print(f"ratio: {mine / base:.1f}x (goal >= 20x)")


_MANIFEST = None


def _audio_of(clip_id: str) -> np.ndarray:
    """The clip's original audio (the Wav2Lip layout keeps a wav per clip)."""
    global _MANIFEST
    import pandas as pd

    if _MANIFEST is None:
        _MANIFEST = pd.read_parquet("data/manifests/embedded.parquet").set_index("clip_id")
    return ffmpeg.read_audio(_MANIFEST.loc[clip_id, "video_path"])


if __name__ == "__main__":
    main()
