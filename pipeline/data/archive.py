"""Safe extraction of a tar archive distributed in parts (LRW, LRS2).

The parts are read one after the other as one stream, which is exactly what `cat part* >
archive.tar` makes, without writing the joined archive to disk (LRS2 would need another ~50 GB).
Extraction streams too (tarfile's `r|` mode; member records are dropped once handled), so memory
stays flat in the archive's size and member count.

Every member is checked before anything of it is written: absolute paths, `..` components,
links whose target resolves outside the destination (also through links extracted earlier),
device files and FIFOs are refused. Python's `data` extraction filter runs as a second check
where available (3.10.12+/3.11.4+). Refused members are collected, so the error names all of
them, and the caller removes the half-made tree: a refused archive leaves nothing behind.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import shutil
import tarfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from ..errors import PipelineError
from ..runtime import write_json_atomic

CHUNK = 1 << 20
MAX_LISTED = 10
_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
_FILTER_ERRORS = (tarfile.FilterError,) if hasattr(tarfile, "FilterError") else ()


class ArchiveError(PipelineError):
    pass


class JoinedParts(io.RawIOBase):
    """Read-only stream over several files in order (the joined archive, never written)."""

    def __init__(self, paths: Iterable[str | Path], progress: Callable[[int], object] | None = None):
        super().__init__()
        self._paths = [Path(p) for p in paths]
        self._index = 0
        self._fh = None
        self._progress = progress

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._index < len(self._paths):
            if self._fh is None:
                self._fh = open(self._paths[self._index], "rb")
            n = self._fh.readinto(buffer)
            if n:
                if self._progress is not None:
                    self._progress(n)
                return n
            self._fh.close()
            self._fh = None
            self._index += 1
        return 0

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        super().close()


def _inside(base: str, path: str) -> bool:
    return os.path.commonpath([base, path]) == base


def unsafe_reason(member: tarfile.TarInfo, dest: str | Path, links_present: bool = True) -> str | None:
    """Why this member must not be extracted into dest, or None when safe. links_present=False
    (no symlink extracted into dest yet) skips resolving the member's path: nothing to follow."""
    name = member.name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in name.split("/"):
        return "path with '..' leaves the destination"
    if member.ischr() or member.isblk() or member.isfifo():
        return "device file or FIFO"
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        return "unsupported member type"
    base = os.path.realpath(dest)
    if links_present and not _inside(base, os.path.realpath(os.path.join(base, name))):
        return "path leaves the destination through a link"
    if member.issym() or member.islnk():
        target = member.linkname.replace("\\", "/")
        if target.startswith("/") or (len(target) > 1 and target[1] == ":"):
            return f"link to an absolute path ({member.linkname})"
        start = posixpath.dirname(name) if member.issym() else ""
        lexical = posixpath.normpath(posixpath.join(start, target))
        if lexical == ".." or lexical.startswith("../"):
            return f"link pointing outside the destination ({member.linkname})"
        if not _inside(base, os.path.realpath(os.path.join(base, start, target))):
            return f"link pointing outside the destination ({member.linkname})"
    return None


def _make_link(member: tarfile.TarInfo, dest: Path) -> str | None:
    """Create a (checked) link member; tarfile's own fallback would seek back in the stream."""
    path = dest / member.name
    if path.exists() or path.is_symlink():
        return "link would replace a path extracted before"
    path.parent.mkdir(parents=True, exist_ok=True)
    if member.issym():
        os.symlink(member.linkname, path)
        return None
    source = dest / member.linkname
    if not source.is_file() or source.is_symlink():
        return "hard link to a file not extracted before it"
    os.link(source, path)
    return None


def extract(
    paths: list[str | Path], dest: str | Path, label: str, progress: Callable[[int], object] | None = None
) -> dict:
    """Extract the joined parts into dest (an empty folder). Raises ArchiveError naming every
    refused member, or when the stream is not a readable tar; the caller removes dest then."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    refused: list[tuple[str, str]] = []
    files = dirs = links = 0
    nbytes = 0
    started = time.perf_counter()
    with JoinedParts(paths, progress) as raw:
        try:
            with tarfile.open(fileobj=raw, mode="r|*", bufsize=CHUNK) as tar:
                while (member := tar.next()) is not None:
                    reason = unsafe_reason(member, dest, links_present=links > 0)
                    try:
                        if reason is None and (member.issym() or member.islnk()):
                            reason = _make_link(member, dest)
                        elif reason is None:
                            tar.extract(member, dest, **_FILTER)
                    except _FILTER_ERRORS as exc:
                        reason = f"refused by the extraction filter: {exc}"
                    except OSError as exc:
                        raise ArchiveError(
                            f"{label}: cannot extract {member.name!r} into {dest}: {exc.strerror or exc}"
                        ) from None
                    tar.members.clear()  # stream mode keeps every record otherwise: memory would grow
                    if reason is not None:
                        refused.append((member.name, reason))
                    elif member.isfile():
                        files += 1
                        nbytes += member.size
                    elif member.isdir():
                        dirs += 1
                    else:
                        links += 1
        except (tarfile.ReadError, tarfile.CompressionError, tarfile.StreamError, EOFError) as exc:
            raise ArchiveError(
                f"{label}: the joined parts are not a complete, readable tar archive ({exc}); "
                "check that every part is listed, in order, and re-run"
            ) from None
    if refused:
        shown = "\n    ".join(f"{name!r}: {why}" for name, why in refused[:MAX_LISTED])
        more = f"\n    ... and {len(refused) - MAX_LISTED} more" if len(refused) > MAX_LISTED else ""
        raise ArchiveError(
            f"{label}: refused {len(refused)} unsafe archive member(s); nothing of the archive was kept:\n    "
            f"{shown}{more}\n  The official archives hold no such members: the parts do not come "
            "from the official distribution or were altered. Check the URL base and parts list."
        )
    if files == 0:
        raise ArchiveError(f"{label}: the archive holds no files")
    return {
        "files": files,
        "dirs": dirs,
        "links": links,
        "bytes": nbytes,
        "seconds": round(time.perf_counter() - started, 3),
    }


# --------------------------------------------------------------------------- installing into a folder
MARKER = "complete.json"  # in the work folder: what was placed into the destination, from which parts


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def read_marker(folder: Path) -> dict:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return {}


def check_free(root: Path, names: list[str], owned: set[str], label: str, hint: str) -> None:
    """Refuse to replace what an earlier install into root did not put there."""
    taken = [n for n in names if ((root / n).exists() or (root / n).is_symlink()) and n not in owned]
    if taken:
        raise ArchiveError(
            f"{label}: {root} already holds {', '.join(taken)}, not placed there by a download: "
            f"{hint} set the destination to an empty folder"
        )


def install(
    paths: list[Path],
    files: list[Path],
    root: Path,
    folder: Path,
    label: str,
    hint: str,
    validate: Callable[[Path], dict],
    record: dict,
    progress,
) -> tuple[dict, dict]:
    """Extract the joined parts (plus loose files) into folder/extract.tmp, validate that tree, then
    move its entries into root, replacing only entries an earlier install placed there. Ownership is
    recorded in folder/complete.json before anything moves; `record` is stored there at the end.
    Returns (validation summary, extraction statistics); on failure nothing is left in root."""
    tmp = folder / "extract.tmp"
    remove(tmp)  # left by an interrupted run
    owned = set(read_marker(folder).get("entries", []))
    placed = False
    try:
        with progress(f"{label} extract", sum(p.stat().st_size for p in paths), 0) as bar:
            stats = extract(paths, tmp, label, bar.update)
        for f in files:
            shutil.copyfile(f, tmp / f.name)
        summary = validate(tmp)
        entries = sorted(os.listdir(tmp))
        check_free(root, entries, owned, label, hint)
        write_json_atomic(folder / MARKER, {"state": "placing", "entries": sorted(owned | set(entries))})
        for name in entries:
            dest = root / name
            if dest.exists() or dest.is_symlink():  # an earlier install's: set aside, then deleted
                trash = folder / "replaced.tmp"
                remove(trash)
                os.replace(dest, trash)
                remove(trash)
            os.replace(tmp / name, dest)
        tmp.rmdir()
        placed = True
    finally:
        if not placed:
            remove(tmp)
    write_json_atomic(folder / MARKER, {**record, "state": "complete", "entries": entries})
    return summary, stats
