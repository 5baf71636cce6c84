"""Fetching one archive part of `source: download` (pipeline/data/download.py): over HTTP with
the user's credentials, resumed with Range after an interruption (restarted cleanly when the
server ignores Range or the file changed), retried automatically a few times, then verified
(size, sha256) and renamed into place; a finished part is never fetched again.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import PipelineError
from ..runtime import write_json_atomic
from .httpclient import Client, _Transient, public_url

log = logging.getLogger("pipeline.acquire")

CHUNK = 1 << 20  # bytes per read/write: memory stays flat in file size
RETRIES = 3  # automatic resumes after a network error, before asking to re-run
RETRY_WAIT = 5.0  # seconds before the first automatic resume (doubled each time)


@dataclass(frozen=True)
class Part:
    name: str
    size: int | None
    sha256: str | None
    kind: str
    url: str


def megabytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


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
