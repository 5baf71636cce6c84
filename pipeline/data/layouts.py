"""The datasets' own layouts: validation with messages that say what is missing where, and
one reader that yields the clips of LRW, LRS2 and the embedded corpus (written as LRW).

LRW:  lipread_mp4/<WORD>/{train,val,test}/<WORD>_<5 digits>.mp4 with a .txt beside each.
LRS2: mvlrs_v1/main/<video id>/<clip>.mp4 + .txt, mvlrs_v1/pretrain/..., and the split lists
      train.txt, val.txt, test.txt (pretrain.txt) whose lines are `<video id>/<clip>` and may
      carry a second token (e.g. ` NF`).
A copy may hold only some splits (`data.<ds>.splits`, e.g. only test for an evaluate-only run):
then only those are required and read.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import PipelineError

LRW_SPLITS = ("train", "val", "test")
LRS2_SPLITS = ("train", "val", "test")
MAX_LISTED = 10


class LayoutError(PipelineError):
    pass


@dataclass
class ClipRef:
    clip_id: str
    split: str
    video_path: str
    txt_path: str
    word: str | None
    speaker: str | None


def parse_txt(path: str | Path) -> dict[str, str]:
    """`Key: value` lines of a clip's .txt, up to the first blank line (LRS2 word tables follow)."""
    out: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                break
            key, sep, value = line.partition(":")
            if sep:
                out[key.strip()] = value.strip()
    return out


def _listing(items: list[str], total: int) -> str:
    shown = "\n    ".join(items[:MAX_LISTED])
    more = f"\n    ... and {total - MAX_LISTED} more" if total > MAX_LISTED else ""
    return f"\n    {shown}{more}"


# --------------------------------------------------------------------------- LRW
def _check_splits(splits, known: tuple[str, ...]) -> tuple[str, ...]:
    splits = tuple(splits or known)
    unknown = [s for s in splits if s not in known]
    if unknown or not splits:
        raise LayoutError(f"splits {list(splits)}: each must be one of {list(known)}")
    return tuple(s for s in known if s in splits)  # the dataset's own order


def _partial_hint(ds: str, present: list[str], wanted: tuple[str, ...]) -> str:
    if not present or set(wanted) <= set(present):
        return ""
    return (
        f"\n  the copy holds the split(s) {present}: to adopt only those (e.g. to evaluate a trained model on "
        f"the test split), set data.{ds}.splits: {present}"
    )


def validate_lrw(root: str | Path, splits=None) -> dict:
    """The copy checked for the given splits (default all three); the record names the splits it
    holds and those used."""
    splits = _check_splits(splits, LRW_SPLITS)
    root = Path(root)
    base = root / "lipread_mp4"
    if not root.is_dir():
        raise LayoutError(f"LRW root {root} does not exist or is not a folder")
    if not base.is_dir():
        raise LayoutError(f"LRW root {root} has no lipread_mp4/ folder (expected {base}/<WORD>/{{train,val,test}}/)")
    words = sorted(e.name for e in os.scandir(base) if e.is_dir())
    if not words:
        raise LayoutError(f"{base} holds no word folders (expected {base}/<WORD>/{{train,val,test}}/)")
    present = [s for s in LRW_SPLITS if any((base / w / s).is_dir() for w in words)]
    missing_dirs, missing_txt, counts = [], [], {s: 0 for s in splits}
    for word in words:
        for split in splits:
            d = base / word / split
            if not d.is_dir():
                missing_dirs.append(f"{d}/")
                continue
            names = {e.name for e in os.scandir(d)}
            mp4s = [n for n in names if n.endswith(".mp4")]
            counts[split] += len(mp4s)
            missing_txt += [str(d / (n[:-4] + ".txt")) for n in mp4s if n[:-4] + ".txt" not in names]
    problems = []
    if missing_dirs:
        problems.append(f"{len(missing_dirs)} split folder(s) missing:{_listing(missing_dirs, len(missing_dirs))}")
    if missing_txt:
        problems.append(
            f"{len(missing_txt)} clip(s) without their .txt:{_listing(sorted(missing_txt), len(missing_txt))}"
        )
    if sum(counts.values()) == 0:
        problems.append(f"no .mp4 clips under {base}/<WORD>/<split>/")
    if problems:
        raise LayoutError(
            f"LRW copy at {root} is incomplete:\n  " + "\n  ".join(problems) + _partial_hint("lrw", present, splits)
        )
    return {"layout": "lrw", "words": len(words), "clips": counts, "splits": list(splits), "splits_present": present}


def iter_lrw(root: str | Path, splits=None) -> Iterator[ClipRef]:
    base = Path(root) / "lipread_mp4"
    splits = _check_splits(splits, LRW_SPLITS)
    for word in sorted(e.name for e in os.scandir(base) if e.is_dir()):
        for split in splits:
            d = base / word / split
            if not d.is_dir():
                continue
            for name in sorted(n for n in os.listdir(d) if n.endswith(".mp4")):
                stem = name[:-4]
                txt = d / f"{stem}.txt"
                speaker = parse_txt(txt).get("Speaker") if txt.is_file() else None
                yield ClipRef(f"{word}/{split}/{stem}", split, str(d / name), str(txt), word, speaker)


# --------------------------------------------------------------------------- LRS2
def _lrs2_list(root: Path, name: str) -> Path | None:
    for cand in (root / name, root / "mvlrs_v1" / name):
        if cand.is_file():
            return cand
    return None


def _read_split_list(path: Path) -> list[str]:
    ids = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            tokens = line.split()
            if tokens:
                ids.append(tokens[0])  # a second token (e.g. NF) is a flag, not part of the id
    return ids


def _lrs2_splits(include_pretrain: bool, splits=None) -> tuple[tuple[str, str], ...]:
    pairs = tuple((s, "main") for s in _check_splits(splits, LRS2_SPLITS))
    return pairs + ((("pretrain", "pretrain"),) if include_pretrain else ())


def validate_lrs2(root: str | Path, include_pretrain: bool = False, splits=None) -> dict:
    """The copy checked for the given splits (default all three; pretrain with include_pretrain);
    the record names the split lists it holds and the splits used."""
    splits = _check_splits(splits, LRS2_SPLITS)
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"LRS2 root {root} does not exist or is not a folder")
    problems, counts = [], {}
    for sub in ("main",) + (("pretrain",) if include_pretrain else ()):
        if not (root / "mvlrs_v1" / sub).is_dir():
            problems.append(f"folder {root / 'mvlrs_v1' / sub}/ is missing")
    present = [s for s in LRS2_SPLITS if _lrs2_list(root, f"{s}.txt") is not None]
    for split, sub in _lrs2_splits(include_pretrain, splits):
        lst = _lrs2_list(root, f"{split}.txt")
        if lst is None:
            problems.append(f"split list {split}.txt is missing (looked in {root}/ and {root}/mvlrs_v1/)")
            continue
        ids = _read_split_list(lst)
        counts[split] = len(ids)
        base = root / "mvlrs_v1" / sub
        if not base.is_dir():
            continue
        missing = [
            str(base / f"{c}{ext}") for c in ids for ext in (".mp4", ".txt") if not (base / f"{c}{ext}").is_file()
        ]
        if missing:
            problems.append(
                f"{len(missing)} file(s) listed in {lst.name} are missing:{_listing(missing, len(missing))}"
            )
    if problems:
        raise LayoutError(
            f"LRS2 copy at {root} is incomplete:\n  " + "\n  ".join(problems) + _partial_hint("lrs2", present, splits)
        )
    return {"layout": "lrs2", "clips": counts, "splits": list(splits), "splits_present": present}


def iter_lrs2(root: str | Path, include_pretrain: bool = False, splits=None) -> Iterator[ClipRef]:
    root = Path(root)
    for split, sub in _lrs2_splits(include_pretrain, splits):
        base = root / "mvlrs_v1" / sub
        for clip in _read_split_list(_lrs2_list(root, f"{split}.txt")):
            yield ClipRef(
                f"{sub}/{clip}", split, str(base / f"{clip}.mp4"), str(base / f"{clip}.txt"), None, clip.split("/")[0]
            )


def validate(layout: str, root: str | Path, include_pretrain: bool = False, splits=None) -> dict:
    if layout == "lrw":
        return validate_lrw(root, splits)
    return validate_lrs2(root, include_pretrain, splits)


def iter_clips(layout: str, root: str | Path, include_pretrain: bool = False, splits=None) -> Iterator[ClipRef]:
    """Every clip of the given splits (default all), as source.json records them."""
    if layout == "lrw":
        return iter_lrw(root, splits)
    return iter_lrs2(root, include_pretrain, splits)
