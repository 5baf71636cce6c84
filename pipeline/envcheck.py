"""Is this interpreter the project's environment? Checked before `python -m pipeline` does anything.

The stage commands of both orchestrators are `python -m pipeline ...`, run by the `python` first
on PATH. When that is not the project's environment (Snakemake or DVC started as
`.venv/bin/snakemake` from a shell whose PATH has the system Python first, say), a stage used to
fail half-way with a bare ModuleNotFoundError from a lazy import. This check looks up every
runtime requirement of pyproject.toml (without importing it) and names what is missing.
"""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
# distribution name -> module to look for, where they differ
IMPORT_NAMES = {"pyyaml": "yaml", "ruamel.yaml": "ruamel.yaml", "scikit-image": "skimage",
                "imageio-ffmpeg": "imageio_ffmpeg", "espeakng-loader": "espeakng_loader",
                "protobuf": "google.protobuf"}
# what the stage commands never import: the orchestrators themselves (a SLURM job or `python -m
# pipeline infer` runs without them)
NOT_NEEDED = ("snakemake", "snakemake-executor-plugin-slurm", "dvc")


def requirements(pyproject: Path = PYPROJECT) -> list[str]:
    """Distribution names of [project] dependencies (empty when the file is not there, e.g. a
    non-editable install, whose installer already checked them)."""
    if not pyproject.is_file():
        return []
    import tomllib

    deps = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {}).get("dependencies", [])
    names = [re.split(r"[\s<>=!~;\[]", d.strip(), maxsplit=1)[0] for d in deps]
    return [n for n in names if n and n.lower() not in NOT_NEEDED]


def module_name(dist: str) -> str:
    return IMPORT_NAMES.get(dist.lower(), dist.lower().replace("-", "_"))


def _found(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a dotted name whose parent is missing
        return False


def missing(dists: list[str]) -> list[str]:
    return [d for d in dists if not _found(module_name(d))]


def message(absent: list[str]) -> str:
    return (f"python -m pipeline: this interpreter ({sys.executable}, Python {sys.version.split()[0]}) lacks "
            f"{len(absent)} of the project's requirements (pyproject.toml): {', '.join(absent)}.\n"
            "The stage commands of Snakemake and DVC run the `python` first on PATH: put the project's "
            "environment first (`source .venv/bin/activate` after `make venv`, or `conda activate synctalkface`), "
            "or run the pipeline with `make run`.")


def check() -> None:
    """Exit with code 2 and the message above when a requirement is missing."""
    absent = missing(requirements())
    if absent:
        print(message(absent), file=sys.stderr)
        raise SystemExit(2)
