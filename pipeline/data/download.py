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

import hashlib
import http.client
import json
import logging
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import PipelineError
from ..runtime import write_json_atomic
from . import archive, layouts
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

CHUNK = 1 << 20  # bytes per read/write: memory stays flat in file size
RETRIES = 3  # automatic resumes after a network error, before asking to re-run
RETRY_WAIT = 5.0  # seconds before the first automatic resume (doubled each time)
SPACE_MARGIN = 1.02  # extracted tree vs archive size, plus file-system slack


@dataclass(frozen=True)
class Part:
    name: str
    size: int | None
    sha256: str | None
    kind: str
    url: str


def _mb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


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


def _hash_prefix(path: Path, n: int) -> hashlib._Hash:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while n > 0 and (block := fh.read(min(CHUNK, n))):
            h.update(block)
            n -= len(block)
    return h


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total) of a Content-Range header such as `bytes 100-199/200` or `bytes */200`."""
    if not value or not value.startswith("bytes "):
        return None, None
    span, _, total = value[6:].partition("/")
    start = span.split("-")[0]
    return (int(start) if start.isdigit() else None), (int(total) if total.isdigit() else None)


class Downloader:
    def __init__(self, ds: str, client: Client, folder: Path, progress_factory):
        self.ds, self.client, self.folder, self.bar = ds, client, folder, progress_factory
        self.transferred = 0  # bytes received over the network, over all attempts

    def finished(self, part: Part) -> dict | None:
        """The record of an already downloaded, verified part; a bad one is removed."""
        final = self.folder / part.name
        if not final.is_file():
            return None
        size = final.stat().st_size
        side = self.folder / f"{part.name}.sha256"
        digest = side.read_text().strip() if side.is_file() else _hash_prefix(final, size).hexdigest()
        if (part.size is not None and size != part.size) or (part.sha256 and digest != part.sha256):
            log.warning("%s: %s on disk does not match the parts list; downloading it again", self.ds, part.name)
            final.unlink()
            side.unlink(missing_ok=True)
            return None
        return {"name": part.name, "kind": part.kind, "size": size, "sha256": digest, "verified": bool(part.sha256)}

    def size(self, part: Part) -> int | None:
        resp = self._retrying(part, lambda: self.client.open(part.url, "HEAD", when="Nothing was written."))
        length = resp.headers.get("Content-Length", "") if resp.status == 200 else ""
        resp.close()
        served = int(length) if length.isdigit() else None
        if part.size is not None and served is not None and served != part.size:
            raise PipelineError(
                f"{self.ds.upper()}: {public_url(part.url)} is {served} bytes but the parts list says "
                f"{part.size}: the server holds another file; check data.{self.ds}.url_base/parts"
            )
        return part.size if part.size is not None else served

    def fetch(self, part: Part, size: int | None) -> dict:
        return self._retrying(part, lambda: self._fetch_once(part, size))

    def _retrying(self, part: Part, action):
        tmp = self.folder / f"{part.name}.part"
        for attempt in range(RETRIES + 1):
            try:
                return action()
            except _Transient as exc:
                kept = tmp.stat().st_size if tmp.is_file() else 0
                if attempt == RETRIES:
                    where = f"; {kept} bytes are kept in {tmp}" if kept else ""
                    raise PipelineError(
                        f"{self.ds.upper()}: network error for {part.name} from {public_url(part.url)} "
                        f"({exc}){where}: re-run the same command to resume"
                    ) from None
                wait = RETRY_WAIT * 2**attempt
                log.warning(
                    "%s: %s: %s; resuming at byte %d in %.0f s (retry %d of %d)",
                    self.ds,
                    part.name,
                    exc,
                    kept,
                    wait,
                    attempt + 1,
                    RETRIES,
                )
                time.sleep(wait)
        raise AssertionError("unreachable")

    def _fetch_once(self, part: Part, size: int | None) -> dict:
        tmp, meta = self.folder / f"{part.name}.part", self.folder / f"{part.name}.part.json"
        offset = tmp.stat().st_size if tmp.is_file() else 0
        if size is not None and offset > size:
            offset = 0
        headers = {}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            validator = json.loads(meta.read_text()).get("validator") if meta.is_file() else None
            if validator:
                headers["If-Range"] = validator  # the server sends the whole file when it changed
        resp = self.client.open(part.url, "GET", headers, when=f"Downloaded parts are kept in {self.folder}.")
        with resp:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if resp.status == 416 or (resp.status == 206 and start != offset):
                done = resp.status == 416 and offset and offset == (size if size is not None else total)
                if not done and not offset:
                    raise PipelineError(
                        f"{self.ds.upper()}: {public_url(part.url)} answered HTTP {resp.status} "
                        f"({resp.headers.get('Content-Range')}) to a request for the whole file"
                    )
                if not done:  # a range the server cannot serve: start again from the first byte
                    resp.close()
                    tmp.unlink(missing_ok=True)
                    meta.unlink(missing_ok=True)
                    return self._fetch_once(part, size)
                resp_body, mode, total = None, "ab", offset
            elif resp.status == 206:
                resp_body, mode = resp, "ab"
            elif resp.status == 200:
                if offset:
                    log.info(
                        "%s: the server ignored the Range request (or %s changed): restarting it from the first byte",
                        self.ds,
                        part.name,
                    )
                offset, mode, resp_body = 0, "wb", resp
                length = resp.headers.get("Content-Length", "")
                total = int(length) if length.isdigit() else None
                etag = resp.headers.get("ETag", "")
                validator = etag if etag and not etag.startswith("W/") else resp.headers.get("Last-Modified")
                write_json_atomic(meta, {"validator": validator, "url": public_url(part.url)})
            else:
                raise PipelineError(f"{self.ds.upper()}: {public_url(part.url)} answered HTTP {resp.status}")
            if size is not None and total is not None and total != size:
                raise PipelineError(
                    f"{self.ds.upper()}: {public_url(part.url)} is {total} bytes but the parts list "
                    f"says {size}: check data.{self.ds}.url_base/parts"
                )
            size = size if size is not None else total
            digest = _hash_prefix(tmp, offset) if offset else hashlib.sha256()
            received = offset
            with open(tmp, mode) as fh, self.bar(f"{self.ds} {part.name}", size, offset) as bar:
                while resp_body is not None:
                    try:
                        chunk = resp_body.read(CHUNK)
                    except (OSError, http.client.HTTPException) as exc:
                        raise _Transient(f"connection lost after {received} bytes: {exc}") from None
                    if not chunk:
                        break
                    fh.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    self.transferred += len(chunk)
                    bar.update(len(chunk))
                fh.flush()
                os.fsync(fh.fileno())
        if size is not None and received < size:
            raise _Transient(f"connection closed after {received} of {size} bytes")
        if size is not None and received > size:
            tmp.unlink()
            raise PipelineError(f"{self.ds.upper()}: {public_url(part.url)} sent more than its {size} bytes; re-run")
        sha = digest.hexdigest()
        if part.sha256 and sha != part.sha256:
            tmp.unlink()
            meta.unlink(missing_ok=True)
            raise PipelineError(
                f"{self.ds.upper()}: checksum mismatch for {part.name} from {public_url(part.url)}: "
                f"expected sha256 {part.sha256}, got {sha}. The download was removed: re-run to fetch "
                "it again; if it persists, the server holds another file (check "
                f"data.{self.ds}.url_base and the sha256 in data.{self.ds}.parts)"
            )
        side = self.folder / f"{part.name}.sha256"
        side_tmp = side.with_name(f".{side.name}.tmp")
        side_tmp.write_text(sha + "\n")
        os.replace(side_tmp, side)
        os.replace(tmp, self.folder / part.name)
        meta.unlink(missing_ok=True)
        return {"name": part.name, "kind": part.kind, "size": received, "sha256": sha, "verified": bool(part.sha256)}


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
            f"{ds.upper()}: not enough disk space at {root}: needs {_mb(to_fetch + extracted)} "
            f"({_mb(to_fetch)} still to download, {_mb(extracted)} for the extracted tree) and "
            f"{_mb(free)} are free: free some space or set data.{ds}.root to a larger disk. "
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
            summary = layouts.validate(ds, root, include_pretrain)
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
            lambda tree: layouts.validate(ds, tree, include_pretrain),
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
        _mb(d["fetched_bytes"]),
        d["seconds"],
        d["mb_per_s"],
        x["files"],
        _mb(x["bytes"]),
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
