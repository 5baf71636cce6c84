"""`source: download` for LRW and LRS2: fetch the licensed archive parts, join, extract, validate.

Where things go: `data.<ds>.root` is the destination. Parts are downloaded to
`<root>/.download/parts/<name>.part` (resumed with HTTP Range after an interruption, restarted
cleanly when the server ignores Range or the file changed), verified (size, sha256) and renamed
to `<name>`; a finished part is never fetched again. The parts are joined as one stream into
the extractor (pipeline.data.archive), which refuses unsafe members; the tree is extracted to
`<root>/.download/extract.tmp/`, validated with the same layout check as `source: local`, and
only then moved into `<root>`. `<root>/.download/complete.json` records what was placed there,
so a later run (e.g. after DVC removed data/raw/<ds>) only validates.

Credentials: the environment variables `<DS>_USERNAME` / `<DS>_PASSWORD` (LRW_USERNAME, ...),
else the netrc file (`$NETRC` or ~/.netrc) entry for the server's host; HTTP basic auth, sent
only to that host. They never appear in params, messages, logs or records.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ..errors import PipelineError
from . import archive, layouts
from .fetch import Downloader, Part, megabytes
from .httpclient import Client, _Transient, env_names, find_credentials, public_url  # noqa: F401

log = logging.getLogger("pipeline.acquire")

# The official distribution (Oxford VGG, BBC licence), as described on the VGG pages for LRW
# (lip_reading/lrw1.html) and LRS2 (lip_reading/lrs2.html). The parts of each dataset are
# `cat`-joined into one tar. Sizes and checksums are not published: null = the size is taken from
# the server and the sha256 is computed and recorded. Verify and override with
# data.<ds>.url_base / data.<ds>.parts. kind "file" = fetched as is into <root> (LRS2's lists).
OFFICIAL = {
    "lrw": {
        "url_base": "https://thor.robots.ox.ac.uk/~vgg/data/lip_reading/data1/",
        "archive": "lrw-v1.tar",
        "top": ["lipread_mp4"],
        "parts": [
            {"name": "lrw-v1-partaa", "size": None, "sha256": None},
            {"name": "lrw-v1-partab", "size": None, "sha256": None},
            {"name": "lrw-v1-partac", "size": None, "sha256": None},
            {"name": "lrw-v1-partad", "size": None, "sha256": None},
            {"name": "lrw-v1-partae", "size": None, "sha256": None},
            {"name": "lrw-v1-partaf", "size": None, "sha256": None},
            {"name": "lrw-v1-partag", "size": None, "sha256": None},
        ],
    },
    "lrs2": {
        "url_base": "https://thor.robots.ox.ac.uk/~vgg/data/lip_reading/data2/",
        "archive": "lrs2_v1.tar",
        "top": ["mvlrs_v1"],
        "parts": [
            {"name": "lrs2_v1_partaa", "size": None, "sha256": None},
            {"name": "lrs2_v1_partab", "size": None, "sha256": None},
            {"name": "lrs2_v1_partac", "size": None, "sha256": None},
            {"name": "lrs2_v1_partad", "size": None, "sha256": None},
            {"name": "lrs2_v1_partae", "size": None, "sha256": None},
            {"name": "pretrain.txt", "size": None, "sha256": None, "kind": "file"},
            {"name": "train.txt", "size": None, "sha256": None, "kind": "file"},
            {"name": "val.txt", "size": None, "sha256": None, "kind": "file"},
            {"name": "test.txt", "size": None, "sha256": None, "kind": "file"},
        ],
    },
}

SPACE_MARGIN = 1.02  # extracted tree vs archive size, plus file-system slack


def plan(ds: str, section: dict) -> tuple[str, list[Part]]:
    """The URL base and the parts to fetch: the package's list unless params override it."""
    official = OFFICIAL[ds]
    base = section.get("url_base") or official["url_base"]
    split = urllib.parse.urlsplit(base)
    if split.username is not None or split.password is not None:
        u, p = env_names(ds)
        raise PipelineError(
            f"data.{ds}.url_base must not hold a user name or password: remove them and set "
            f"{u}/{p} or a netrc entry for {split.hostname} instead"
        )
    if split.scheme not in ("http", "https") or not split.hostname:
        raise PipelineError(f"data.{ds}.url_base {public_url(base)!r} is not an http(s) URL")
    base = base if base.endswith("/") else base + "/"
    parts, seen = [], set()
    for entry in section.get("parts") or official["parts"]:
        name = entry["name"]
        if (
            not name
            or name in (".", "..")
            or "/" in name
            or "\\" in name
            or name in seen
            or name.endswith((".part", ".sha256", ".part.json"))
        ):
            raise PipelineError(f"data.{ds}.parts: {name!r} is not a plain, unique file name")
        seen.add(name)
        sha = (entry.get("sha256") or "").lower() or None
        parts.append(Part(name, entry.get("size"), sha, entry.get("kind") or "part", base + urllib.parse.quote(name)))
    if not any(p.kind == "part" for p in parts):
        raise PipelineError(f"data.{ds}.parts lists no archive part (kind: part)")
    return base, parts


def _free_bytes(path: Path) -> int:
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def check_space(ds: str, root: Path, pending: dict[str, int], sizes: dict[str, int | None], parts: list[Part]) -> None:
    """Refuse to start when the remaining download plus the extracted tree cannot fit."""
    to_fetch = sum(n for n in pending.values())
    extracted = int(SPACE_MARGIN * sum(sizes[p.name] or 0 for p in parts))
    free = _free_bytes(root)
    unknown = [p.name for p in parts if sizes[p.name] is None]
    if unknown:
        log.warning("%s: size unknown for %s: the disk-space check leaves them out", ds, ", ".join(unknown))
    if to_fetch + extracted > free:
        raise PipelineError(
            f"{ds.upper()}: not enough disk space at {root}: needs {megabytes(to_fetch + extracted)} "
            f"({megabytes(to_fetch)} still to download, {megabytes(extracted)} for the extracted tree) and "
            f"{megabytes(free)} are free: free some space or set data.{ds}.root to a larger disk. "
            "Nothing was written."
        )


def _progress(desc: str, total: int | None, initial: int):
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=None,
        dynamic_ncols=True,
    )


def _matches(marker: dict, parts: list[Part]) -> bool:
    """Whether the completion record describes these parts (declared sizes/checksums agree)."""
    done = marker.get("parts", []) if marker.get("state") == "complete" else []
    return [(d["name"], d["kind"]) for d in done] == [(p.name, p.kind) for p in parts] and all(
        (p.size is None or p.size == d["size"]) and (p.sha256 is None or p.sha256 == d["sha256"])
        for p, d in zip(parts, done)
    )


def acquire(ds: str, section: dict, progress=_progress) -> tuple[dict, dict]:
    """Download, verify, join, extract and validate; returns (source record, run statistics)."""
    if not section.get("root"):
        raise PipelineError(
            f"data.{ds}.root is null: set it to the folder to download {ds.upper()} into (the "
            f"dataset is extracted there, the parts are kept in <root>/.download/)"
        )
    root = Path(section["root"]).expanduser().resolve()
    include_pretrain = bool(section.get("include_pretrain", False))
    splits = section.get("splits")
    base, parts = plan(ds, section)
    folder = root / ".download"
    marker = archive.read_marker(folder)
    hint = f"set data.{ds}.source: local to adopt that copy, or"
    stats = {
        "download": {"parts": len(parts), "fetched_parts": 0, "fetched_bytes": 0, "seconds": 0.0},
        "extract": {"files": 0, "bytes": 0, "seconds": 0.0},
    }
    if _matches(marker, parts):
        log.info("%s: already downloaded and extracted into %s (%s); validating", ds, root, folder / archive.MARKER)
        base, records = marker.get("url_base", base), marker["parts"]
        try:
            summary = layouts.validate(ds, root, include_pretrain, splits)
        except layouts.LayoutError as exc:
            placed = " ".join(str(root / e) for e in marker.get("entries", []))
            raise PipelineError(
                f"{exc}\n  {folder / archive.MARKER} says the download was extracted there: delete "
                f"it and {placed}, and re-run to extract again from the kept parts"
            ) from None
    else:
        owned = set(marker.get("entries", []))
        archive.check_free(
            root, OFFICIAL[ds]["top"] + [p.name for p in parts if p.kind == "file"], owned, ds.upper(), hint
        )
        records = _download(ds, root, folder / "parts", base, parts, progress, stats["download"])
        keep = [{k: r[k] for k in ("name", "kind", "size", "sha256", "verified")} for r in records]
        summary, stats["extract"] = archive.install(
            [folder / "parts" / p.name for p in parts if p.kind == "part"],
            [folder / "parts" / p.name for p in parts if p.kind == "file"],
            root,
            folder,
            f"{ds.upper()} ({OFFICIAL[ds]['archive']})",
            hint,
            lambda tree: layouts.validate(ds, tree, include_pretrain, splits),
            {"url_base": public_url(base), "parts": keep},
            progress,
        )
    d, x = stats["download"], stats["extract"]
    d["mb_per_s"] = round(d["fetched_bytes"] / 1e6 / d["seconds"], 2) if d["seconds"] else 0.0
    log.info(
        "%s: %d parts (%d fetched, %d already present), %s downloaded in %.1f s (%.1f MB/s); extracted %d "
        "files (%s) in %.1f s; clips %s",
        ds,
        d["parts"],
        d["fetched_parts"],
        d["parts"] - d["fetched_parts"],
        megabytes(d["fetched_bytes"]),
        d["seconds"],
        d["mb_per_s"],
        x["files"],
        megabytes(x["bytes"]),
        x["seconds"],
        json.dumps(summary.get("clips")),
    )
    record = {
        "dataset": ds,
        "kind": "downloaded",
        "source": "download",
        "root": str(root),
        "include_pretrain": include_pretrain,
        "url_base": public_url(base),
        "archive": OFFICIAL[ds]["archive"],
        "parts": [{k: r[k] for k in ("name", "kind", "size", "sha256", "verified")} for r in records],
        **summary,
    }
    return record, stats


def _download(ds: str, root: Path, parts_dir: Path, base: str, parts: list[Part], progress, stats: dict) -> list[dict]:
    """Every part on disk and verified: probe sizes (and credentials), check space, fetch what is missing."""
    dl = Downloader(ds, None, parts_dir, progress)
    records = {p.name: dl.finished(p) for p in parts}
    todo = [p for p in parts if records[p.name] is None]
    sizes = {p.name: (records[p.name]["size"] if records[p.name] else p.size) for p in parts}
    if todo:
        dl.client = Client(ds, find_credentials(ds, urllib.parse.urlsplit(base).hostname))
        sizes.update({p.name: dl.size(p) for p in todo})  # checks the credentials before anything is written
    pending = {}
    for p in todo:
        partial = parts_dir / f"{p.name}.part"
        pending[p.name] = max(0, (sizes[p.name] or 0) - (partial.stat().st_size if partial.is_file() else 0))
    check_space(ds, root, pending, sizes, parts)
    started = time.perf_counter()
    for p in todo:
        records[p.name] = dl.fetch(p, sizes[p.name])
        stats["fetched_parts"] += 1
    stats["fetched_bytes"] = dl.transferred
    stats["seconds"] = round(time.perf_counter() - started, 3)
    return [records[p.name] for p in parts]
