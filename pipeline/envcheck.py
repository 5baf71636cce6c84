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
# distribution name (PEP 503 normalised) -> module to look for, where they differ
IMPORT_NAMES = {
    "pyyaml": "yaml",
    "ruamel-yaml": "ruamel.yaml",
    "scikit-image": "skimage",
    "imageio-ffmpeg": "imageio_ffmpeg",
    "espeakng-loader": "espeakng_loader",
    "protobuf": "google.protobuf",
}
# what the stage commands never import: the orchestrators themselves (a SLURM job or `python -m
# pipeline infer` runs without them)
NOT_NEEDED = ("snakemake", "snakemake-executor-plugin-slurm", "dvc")


def normalise(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def project_table_by_pattern(text: str) -> dict:
    """[project]'s `dependencies` and `requires-python` read by pattern, for interpreters without
    tomllib (Python < 3.11: the old interpreters this check exists for, and 3.10, which the project
    supports). Expects the array's closing bracket at the start of a line, as pyproject.toml has it."""
    deps = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", text, re.S | re.M)
    py = re.search(r"^requires-python\s*=\s*\"([^\"]*)\"", text, re.M)
    return {
        "dependencies": re.findall(r"\"([^\"]+)\"", deps.group(1)) if deps else [],
        "requires-python": py.group(1) if py else "",
    }


def _project_table(text: str) -> dict:
    try:
        import tomllib
    except ImportError:
        return project_table_by_pattern(text)
    return tomllib.loads(text).get("project", {})


def requirements(pyproject: Path = PYPROJECT) -> tuple[list[str], str]:
    """(distribution names of [project] dependencies, requires-python); empty when the file is not
    there (a non-editable install, whose installer already checked them). Requirements with an
    environment marker (`; sys_platform == ...`) are left out: they may not apply here."""
    if not pyproject.is_file():
        return [], ""
    table = _project_table(pyproject.read_text(encoding="utf-8"))
    names = [re.split(r"[\s<>=!~\[]", d.strip(), maxsplit=1)[0] for d in table.get("dependencies", []) if ";" not in d]
    return [n for n in names if n and normalise(n) not in NOT_NEEDED], table.get("requires-python", "")


def module_name(dist: str) -> str:
    key = normalise(dist)
    return IMPORT_NAMES.get(key, key.replace("-", "_"))


def _found(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a dotted name whose parent is missing
        return False


def missing(dists: list[str]) -> list[str]:
    return [d for d in dists if not _found(module_name(d))]


def python_ok(spec: str, version: tuple = tuple(sys.version_info[:2])) -> bool:
    """Whether `version` meets the >=X.Y and <X.Y bounds of a requires-python spec."""
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))
    for op, v in re.findall(r"(>=|<)\s*(\d+(?:\.\d+)*)", spec):
        if (op == ">=" and version < as_tuple(v)) or (op == "<" and version >= as_tuple(v)):
            return False
    return True


def message(absent: list[str], python_spec: str = "") -> str:
    version = sys.version.split()[0]
    what = (
        f"is Python {version}, the project needs {python_spec}"
        if python_spec
        else f"lacks {len(absent)} of the project's requirements (pyproject.toml): {', '.join(absent)}"
    )
    return (
        f"python -m pipeline: this interpreter ({sys.executable}, Python {version}) {what}.\n"
        "The stage commands of Snakemake and DVC run the `python` first on PATH: put the project's "
        "environment first (`source .venv/bin/activate` after `make venv`, or `conda activate synctalkface`), "
        "or run the pipeline with `make run`."
    )


def check() -> None:
    """Exit with code 2 and the message above when the Python version or a requirement is wrong.
    Presence only: a requirement at the wrong version is the installer's to catch."""
    dists, python_spec = requirements()
    if python_spec and not python_ok(python_spec):
        print(message([], python_spec), file=sys.stderr)
        raise SystemExit(2)
    absent = missing(dists)
    if absent:
        print(message(absent), file=sys.stderr)
        raise SystemExit(2)
