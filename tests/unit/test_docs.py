"""The documentation is the project's own: every relative link in README.md, CHANGELOG.md and docs/
leads to a file of the repository (and a #heading of it that exists), and nothing in the tree cites
a document the project does not contain."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from helpers import REPO

ROOT = REPO
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _docs() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _anchors(md: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in md.read_text().splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            text = re.sub(r"[^\w\- ]", "", text)
            out.add(text.replace(" ", "-"))
    return out


def test_every_relative_link_in_the_docs_resolves():
    broken = []
    for md in _docs():
        for target in LINK.findall(md.read_text()):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (md.parent / path).resolve() if path else md
            if not dest.exists():
                broken.append(f"{md.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{md.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_nothing_cites_a_document_outside_the_project():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    outside = re.compile(r"DESIGN §|DESIGN\.md|\.\./shared|development log")
    hits = []
    for name in files:
        path = ROOT / name
        if (
            name == "tests/unit/test_docs.py"
            or not path.is_file()
            or path.suffix in {".png", ".mp4", ".parquet", ".pt"}
        ):
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        hits += [f"{name}:{k + 1}" for k, line in enumerate(text.splitlines()) if outside.search(line)]
    assert not hits, hits
    cited = set(
        re.findall(r"docs/design\.md §(\d+)", "\n".join((ROOT / f).read_text() for f in files if f.endswith(".py")))
    )
    sections = set(re.findall(r"^## (\d+)\. ", (ROOT / "docs/design.md").read_text(), re.M))
    assert cited and cited <= sections, cited - sections
