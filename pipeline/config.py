"""Load params.yaml, validate it against the schema, give each stage only what it declared.

params.yaml is the one truth (docs/design.md §3). Every command calls `load()` before doing any work;
a stage then works on `stage_view(params, spec)`, which holds only the dotted keys the stage
declared in `pipeline.stages`, so an undeclared read fails loudly instead of escaping the
orchestrators' change detection.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "params.schema.yaml"
PRESETS_DIR = REPO_ROOT / "workflow" / "presets"


def read_yaml(path: Path | str, what: str = "file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def _schema() -> dict:
    return read_yaml(SCHEMA_PATH, "params schema")


def _key_path(error) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def _describe(error) -> str:
    """One line naming the key and what is wrong with it."""
    where = _key_path(error)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        keys = ", ".join(f"{where}.{k}" if where != "(top level)" else k for k in extra)
        return f"unknown key {keys} (allowed here: {', '.join(allowed)})"
    if error.validator == "required":
        return f"{where}: {error.message}"
    return f"{where}: {error.message}"


def validate(params: Any, source: str = "params.yaml") -> dict:
    """Raise ConfigError naming every invalid key; return params unchanged when valid."""
    import jsonschema

    if not isinstance(params, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(params).__name__}")
    validator_cls = jsonschema.validators.validator_for(_schema())
    validator = validator_cls(_schema())
    errors = sorted(validator.iter_errors(params), key=lambda e: (len(e.absolute_path), _key_path(e)))
    if errors:
        lines = "\n  ".join(_describe(e) for e in errors[:10])
        raise ConfigError(f"{source} is invalid:\n  {lines}")
    _check_semantics(params, source)
    return params


def _check_semantics(params: dict, source: str) -> None:
    """Rules a JSON schema states badly: they get messages that say what to do."""
    shards = params["preprocess"]["shards"]
    if shards != list(range(len(shards))):
        raise ConfigError(
            f"{source}: preprocess.shards must be [0, 1, ..., n-1] (got {shards}); "
            f"for {len(shards)} shards write {list(range(len(shards)))}"
        )
    ds = params["data"]["dataset"]
    if ds in ("lrw", "lrs2"):
        section = params["data"][ds]
        if not section["root"]:
            what = (
                "the folder that holds your copy"
                if section["source"] == "local"
                else f"the folder to download {ds.upper()} into"
            )
            raise ConfigError(
                f"{source}: data.{ds}.root is null, but data.dataset is {ds} with source {section['source']}: "
                f"set data.{ds}.root to {what}"
            )
    expert, gen = params["sync_expert"], params["generator"]
    expert_audio = expert["audio_width"] if expert.get("audio_width") is not None else expert["width"]
    if gen["audio_init"] == "expert" and not expert.get("pretrained") and expert_audio != gen["width"]:
        raise ConfigError(
            f"{source}: generator.audio_init is expert, but the expert's audio encoder is at width {expert_audio} "
            f"(sync_expert.audio_width, or sync_expert.width when that is null) and the generator's at "
            f"generator.width {gen['width']}: set sync_expert.audio_width to {gen['width']}, or "
            f"generator.audio_init to random"
        )
    for name in ("lrw", "lrs2"):
        url = params["data"][name].get("url_base")
        if url and "@" in url.split("//", 1)[-1].split("/", 1)[0]:
            raise ConfigError(
                f"{source}: data.{name}.url_base must not hold a user name or password: remove them and "
                f"set {name.upper()}_USERNAME/{name.upper()}_PASSWORD or a netrc entry for the host instead"
            )


def load(path: Path | str = "params.yaml") -> dict:
    params = read_yaml(path, "params file")
    return validate(params, str(path))


def get(params: dict, dotted: str) -> Any:
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"params key {dotted!r} not found (at {part!r})")
        node = node[part]
    return node


def stage_view(params: dict, keys: Iterable[str]) -> dict:
    """A copy of params holding only the given dotted keys (a stage's declared params)."""
    view: dict = {}
    for dotted in keys:
        value = copy.deepcopy(get(params, dotted))
        node = view
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return view


def flatten(params: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; used for MLflow params and comparisons."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_preset(name: str, _chain: tuple[str, ...] = ()) -> dict:
    """workflow/presets/<name>.yaml with its `include:` (a preset name or a list of them) merged in
    first, so that the file's own keys win."""
    if name in _chain:
        raise ConfigError(f"preset {name!r} includes itself ({' -> '.join(_chain + (name,))})")
    preset_file = PRESETS_DIR / f"{name}.yaml"
    if not preset_file.is_file():
        where = f" (included by {_chain[-1]!r})" if _chain else ""
        raise ConfigError(f"unknown preset {name!r}{where} (available: {', '.join(preset_names())})")
    own = read_yaml(preset_file, "preset") or {}
    include = own.pop("include", None) or []
    merged: dict = {}
    for base in [include] if isinstance(include, str) else include:
        merged = deep_merge(merged, load_preset(str(base), _chain + (name,)))
    return deep_merge(merged, own)


def apply_preset(name: str, params_path: Path | str = "params.yaml") -> dict:
    """Merge the preset `name` (with its includes) into params.yaml (comments kept), validate,
    write atomically."""
    return update_params(params_path, load_preset(name), f"preset {name}")


def update_params(params_path: Path | str, update: dict, what: str) -> dict:
    """Merge `update` into params.yaml keeping its comments; validate first, write atomically."""
    from ruamel.yaml import YAML

    plain = deep_merge(read_yaml(params_path, "params file"), update)
    validate(plain, f"{params_path} after {what}")
    rt = YAML()  # round-trip: keeps the comments of params.yaml
    with open(params_path, encoding="utf-8") as fh:
        doc = rt.load(fh)
    _merge_into(doc, update)
    from .runtime import atomic_file

    with atomic_file(params_path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        rt.dump(doc, fh)
    return plain


def _merge_into(doc, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            _merge_into(doc[key], value)
        else:
            doc[key] = value
