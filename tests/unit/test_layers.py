"""The package's layers: a module imports only from its own package or from layers below it.

Tools for using trained networks (pipeline/nets) sit under the stage packages, so no stage imports
another's internals, and the models import no file handling at all (docs/design.md §2).
"""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import REPO

ROOT = REPO

# lowest first; the groups of one layer may not import each other
LAYERS = [
    ("pure",),  # errors, geometry
    ("base",),  # what a stage needs from its surroundings: params, paths, runtime, registry, tracking
    ("io", "models"),
    ("nets",),  # checkpoints, generation, sync scoring, image metrics
    ("data",),
    ("preprocess",),
    ("infer",),
    ("train", "evaluate"),
    ("cli",),
]
TOP_LEVEL = {
    "errors": "pure",
    "geometry": "pure",
    "config": "base",
    "paths": "base",
    "runtime": "base",
    "runner": "base",
    "stages": "base",
    "tracking": "base",
    "mp_solutions": "base",
    "envcheck": "base",
    "infer": "infer",
    "cli": "cli",
    "__main__": "cli",
}
LAYER_OF = {group: k for k, layer in enumerate(LAYERS) for group in layer}


def group_of(module: str) -> str | None:
    """'pipeline.train.loop' -> 'train'; 'pipeline.runtime' -> 'base'; 'pipeline' -> None."""
    parts = [p for p in module.split(".") if p != "__init__"]
    if len(parts) < 2:
        return None
    return TOP_LEVEL.get(parts[1], parts[1])


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported pipeline module) of every import in `path`, at the top or in a function."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = module.split(".")[:-1]  # the package of a module, and of an __init__
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            dotted = ".".join(base + ([node.module] if node.module else []))
            names = [f"{dotted}.{a.name}" for a in node.names] if not node.module else [dotted]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found += [(node.lineno, n) for n in names if n == "pipeline" or n.startswith("pipeline.")]
    return found


def violations() -> list[str]:
    out = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        me = group_of(".".join(path.relative_to(ROOT).with_suffix("").parts))
        if me is None:
            continue
        assert me in LAYER_OF, f"{path.relative_to(ROOT)}: package {me!r} has no layer in tests/unit/test_layers.py"
        for line, target in imports(path):
            other = group_of(target)
            if other is None or other == me:
                continue
            where = f"{path.relative_to(ROOT)}:{line} imports {target}"
            if me == "models" and other != "pure":
                out.append(f"{where}: models know tensors, not files, params or tracking")
            elif LAYER_OF[other] >= LAYER_OF[me]:
                out.append(f"{where}: {me} (layer {LAYER_OF[me]}) may not import {other} (layer {LAYER_OF[other]})")
    return out


def test_no_import_runs_up_or_sideways():
    found = violations()
    assert not found, "imports against the layers:\n" + "\n".join(found)


def test_every_package_has_a_layer():
    packages = {p.name for p in (ROOT / "pipeline").iterdir() if (p / "__init__.py").is_file()}
    modules = {p.stem for p in (ROOT / "pipeline").glob("*.py") if p.name != "__init__.py"}
    assert packages - set(LAYER_OF) == set()
    assert modules - set(TOP_LEVEL) == set()


def test_the_check_finds_an_arrow_up(tmp_path, monkeypatch):
    """The checker itself: a stage-to-stage import and a model reading files are both reported."""
    fake = tmp_path / "pipeline"
    (fake / "train").mkdir(parents=True)
    (fake / "models").mkdir()
    for p in (fake, fake / "train", fake / "models"):
        (p / "__init__.py").write_text("")
    (fake / "train" / "x.py").write_text("from ..evaluate import run\n")
    (fake / "models" / "y.py").write_text("from ..io import store\nfrom .. import geometry\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    found = violations()
    assert len(found) == 2
    assert "train (layer 7) may not import evaluate (layer 7)" in found[1]
    assert "models know tensors" in found[0]
