"""The processed-data store: per shard, flat arrays with an index for random access of frame
windows (docs/design.md §4), not one jpg per frame.

A shard folder holds
  frames.u8      uint8 crops [N, S, S, 3] back to back (storage: raw), or
  frames.jpg     JPEG bytes back to back + frames_jpg.npy (int64 offsets, N + 1) (storage: jpeg)
  landmarks.f16  float16 [N, 468, 2] in crop coordinates
  mels.f32       float32 [M, 80]
  clips.parquet  one row per clip: clip_id, frame_offset, n_frames, mel_offset, n_mel, ...
  failures.parquet  the shard's rejected clips and why
  meta.json      size, storage, counts, and the sha1 of every file above
`Store` opens the gathered index and memory-maps the shards: a window costs one slice.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..runtime import atomic_folder, sha1_file

N_LM = 468


def encode_jpeg(frames: np.ndarray, quality: int) -> list[bytes]:
    import cv2

    params = [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)]
    out = []
    for f in frames:
        ok, buf = cv2.imencode(".jpg", f[..., ::-1], params)  # cv2 wants BGR
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        out.append(buf.tobytes())
    return out


def decode_jpeg(data: bytes) -> np.ndarray:
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return img[..., ::-1]


CLIP_COLUMNS = ["clip_id", "frame_offset", "n_frames", "mel_offset", "n_mel"]


def write_shard(out_dir: Path, clips, size: int, storage: str, failures: pd.DataFrame) -> dict:
    """Write a shard from finished clips (dicts with clip_id, frames or jpeg, landmarks, mel, meta)
    into a temporary folder renamed at the end. `clips` may be a generator: one clip is in memory
    at a time; the caller yields them in clip_id order."""
    out_dir = Path(out_dir)
    with atomic_folder(out_dir) as tmp:
        rows, f_off, m_off, jpeg_offsets = [], 0, 0, [0]
        with (
            open(tmp / ("frames.u8" if storage == "raw" else "frames.jpg"), "wb") as ff,
            open(tmp / "landmarks.f16", "wb") as lf,
            open(tmp / "mels.f32", "wb") as mf,
        ):
            for clip in clips:
                n = len(clip["landmarks"])
                if storage == "raw":
                    ff.write(np.ascontiguousarray(clip["frames"], np.uint8).tobytes())
                else:
                    for blob in clip["jpeg"]:
                        ff.write(blob)
                        jpeg_offsets.append(jpeg_offsets[-1] + len(blob))
                lf.write(np.asarray(clip["landmarks"], np.float16).tobytes())
                mf.write(np.asarray(clip["mel"], np.float32).tobytes())
                rows.append(
                    {
                        "clip_id": clip["clip_id"],
                        "frame_offset": f_off,
                        "n_frames": n,
                        "mel_offset": m_off,
                        "n_mel": len(clip["mel"]),
                        **clip["meta"],
                    }
                )
                f_off += n
                m_off += len(clip["mel"])
        if storage == "jpeg":
            np.save(tmp / "frames_jpg.npy", np.array(jpeg_offsets, np.int64))
        table = pd.DataFrame(rows) if rows else pd.DataFrame(columns=CLIP_COLUMNS)
        table.to_parquet(tmp / "clips.parquet", index=False)
        failures.to_parquet(tmp / "failures.parquet", index=False)
        files = sorted(p.name for p in tmp.iterdir())
        meta = {
            "size": size,
            "storage": storage,
            "clips": len(rows),
            "frames": f_off,
            "mel_frames": m_off,
            "rejected": len(failures),
            "sha1": {name: sha1_file(tmp / name) for name in files},
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def verify_shard(shard_dir: Path) -> None:
    """Raise ValueError naming the file whose checksum does not match meta.json."""
    meta = json.loads((Path(shard_dir) / "meta.json").read_text())
    for name, digest in meta["sha1"].items():
        if sha1_file(Path(shard_dir) / name) != digest:
            raise ValueError(f"{Path(shard_dir) / name}: checksum mismatch (corrupt or modified)")


class _Shard:
    def __init__(self, path: Path):
        meta = json.loads((path / "meta.json").read_text())
        self.size, self.storage = meta["size"], meta["storage"]
        s = self.size
        n, m = meta["frames"], meta["mel_frames"]
        self.landmarks = (
            np.memmap(path / "landmarks.f16", np.float16, "r", shape=(n, N_LM, 2))
            if n
            else np.zeros((0, N_LM, 2), np.float16)
        )
        self.mels = np.memmap(path / "mels.f32", np.float32, "r", shape=(m, 80)) if m else np.zeros((0, 80), np.float32)
        if self.storage == "raw":
            self.frames = np.memmap(path / "frames.u8", np.uint8, "r", shape=(n, s, s, 3)) if n else None
        else:
            self.jpeg = np.memmap(path / "frames.jpg", np.uint8, "r") if n else None
            self.offsets = np.load(path / "frames_jpg.npy")

    def frames_at(self, start: int, stop: int) -> np.ndarray:
        if self.storage == "raw":
            return np.array(self.frames[start:stop])
        stop = min(stop, len(self.offsets) - 1)
        if start >= stop:
            return np.zeros((0, self.size, self.size, 3), np.uint8)
        return np.stack(
            [decode_jpeg(self.jpeg[self.offsets[i] : self.offsets[i + 1]].tobytes()) for i in range(start, stop)]
        )


class Store:
    """Random access to the processed clips of one dataset (data/processed/<dataset>/)."""

    def __init__(self, root: str | Path, index: pd.DataFrame | None = None):
        self.root = Path(root)
        self.index = index if index is not None else pd.read_parquet(self.root / "index.parquet")
        self._rows = {cid: i for i, cid in enumerate(self.index["clip_id"])}
        self._shards: dict[int, _Shard] = {}

    def __len__(self) -> int:
        return len(self.index)

    def _shard(self, k: int) -> _Shard:
        if k not in self._shards:  # opened lazily: each DataLoader worker maps its own
            self._shards[k] = _Shard(self.root / "shards" / f"shard-{k}")
        return self._shards[k]

    def row(self, clip_id: str):
        try:
            return self.index.iloc[self._rows[clip_id]]
        except KeyError:
            raise KeyError(f"clip {clip_id!r} is not in {self.root / 'index.parquet'}") from None

    def frames(self, clip_id: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        r = self.row(clip_id)
        stop = r.n_frames if stop is None else stop
        if not 0 <= start <= stop <= r.n_frames:
            raise IndexError(f"clip {clip_id}: frames {start}..{stop} outside 0..{r.n_frames}")
        out = self._shard(int(r.shard)).frames_at(r.frame_offset + start, r.frame_offset + stop)
        if len(out) != stop - start:
            raise IndexError(
                f"clip {clip_id}: shard-{r.shard} holds {len(out)} of frames {start}..{stop} "
                f"(index and shard disagree: re-run gather)"
            )
        return out

    def landmarks(self, clip_id: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        r = self.row(clip_id)
        stop = r.n_frames if stop is None else stop
        return np.array(self._shard(int(r.shard)).landmarks[r.frame_offset + start : r.frame_offset + stop], np.float32)

    def mel(self, clip_id: str) -> np.ndarray:
        r = self.row(clip_id)
        return np.array(self._shard(int(r.shard)).mels[r.mel_offset : r.mel_offset + r.n_mel])
