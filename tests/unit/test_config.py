"""params.yaml validation, the stage views and presets; the interpreter check."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from helpers import REPO, default_params, run_cli

from pipeline import config, envcheck
from pipeline.errors import ConfigError
from pipeline.stages import STAGES


def write(tmp_path, params):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(params, sort_keys=False))
    return p


def test_default_params_are_valid():
    config.load(REPO / "params.yaml")


def test_every_params_key_is_described_in_the_schema():
    """The schema documents every key (the Snakemake template's way): a key without a description
    is a key a user cannot look up."""
    missing = []

    def walk(node, where):
        if not isinstance(node, dict):
            return
        for name, sub in (node.get("properties") or {}).items():
            if not (isinstance(sub, dict) and str(sub.get("description", "")).strip()):
                missing.append(f"{where}{name}")
            walk(sub, f"{where}{name}.")
        for key in ("items", "additionalProperties"):
            walk(node.get(key), where + ("[]." if key == "items" else "*."))
        for sub in (node.get("patternProperties") or {}).values():
            walk(sub, where + "*.")
        for name, sub in (node.get("$defs") or {}).items():
            walk(sub, f"$defs.{name}.")
        for key in ("oneOf", "anyOf", "allOf"):
            for sub in node.get(key) or []:
                walk(sub, where)

    walk(yaml.safe_load(config.SCHEMA_PATH.read_text()), "")
    assert not missing, missing


@pytest.mark.parametrize(
    "mutate, key, words",
    [
        (lambda p: p["index"].update(workerz=1), "index.workerz", "unknown key"),
        (lambda p: p.update(extra={}), "extra", "unknown key"),
        (lambda p: p["index"].update(min_frames="nine"), "index.min_frames", "not of type"),
        (lambda p: p["data"]["embedded"].update(train_clips=0), "data.embedded.train_clips", "minimum"),
        (lambda p: p["data"].update(dataset="voxceleb"), "data.dataset", "is not one of"),
        (lambda p: p["data"]["embedded"].pop("seed"), "data.embedded", "seed"),
    ],
)
def test_invalid_params_name_the_key(tmp_path, mutate, key, words):
    params = default_params()
    mutate(params)
    path = write(tmp_path, params)
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert key in str(err.value) and words in str(err.value)


def test_cli_exits_2_and_writes_nothing_on_bad_params(tmp_path):
    params = default_params()
    params["index"]["min_frames"] = -3
    write(tmp_path, params)
    for stage in STAGES:
        extra = {"preprocess": ["--shard", "0"], "train_generator": ["--variant", "memory"]}.get(stage, [])
        proc = run_cli([stage] + extra, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert "index.min_frames" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_dataset_without_root_is_refused(tmp_path):
    params = default_params()
    params["data"]["dataset"] = "lrw"
    with pytest.raises(ConfigError, match="data.lrw.root"):
        config.validate(params)


def test_an_audio_encoder_start_from_an_expert_of_another_width_is_refused_before_any_stage():
    params = default_params()
    params["generator"]["audio_init"] = "expert"
    gen_width = params["generator"]["width"]
    params["sync_expert"].update(width=gen_width, audio_width=2 * gen_width)
    with pytest.raises(
        ConfigError, match=rf"width {2 * gen_width} .*generator.width {gen_width}: set sync_expert.audio_width"
    ):
        config.validate(params)
    params["sync_expert"]["audio_width"] = None  # the face encoder's width, equal to the generator's
    config.validate(params)
    params["sync_expert"].update(audio_width=gen_width, width=2 * gen_width)
    config.validate(params)
    params["sync_expert"].update(audio_width=2 * gen_width, pretrained="expert.pt")  # checked by the stage
    config.validate(params)


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(tmp_path / "bad.yaml")


def test_stage_view_holds_only_declared_keys():
    view = config.stage_view(default_params(), STAGES["index"].params)
    assert set(view) == {"data", "index"}
    assert set(view["data"]) == {"dataset"}
    with pytest.raises(KeyError):
        view["data"]["embedded"]


def test_preset_merges_validates_and_keeps_comments(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    before = path.read_text()
    # lrw needs a root: the merged file is invalid, so nothing is written
    with pytest.raises(ConfigError, match="data.lrw.root"):
        config.apply_preset("lrw", path)
    assert path.read_text() == before
    params = yaml.safe_load(before)
    params["data"]["lrs2"]["root"] = "/datasets/lrs2"
    text = before.replace(
        "root: null               # folder that holds mvlrs_v1/",
        "root: /datasets/lrs2     # folder that holds mvlrs_v1/",
    )
    path.write_text(text)
    merged = config.apply_preset("lrs2", path)
    assert merged["data"]["dataset"] == "lrs2"
    after = path.read_text()
    assert "# The one parameter file" in after  # comments survive
    assert yaml.safe_load(after) == merged
    proc = run_cli(["validate"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("name", ["lrw", "lrs2"])
def test_dataset_presets_bring_the_papers_recipe(tmp_path, name):
    """The embedded corpus's CPU recipe (quarter width, fast lr, half the sync weight, residual
    output) must not follow a user to LRW/LRS2: the dataset presets include presets/paper.yaml."""
    path = tmp_path / "params.yaml"
    text = (REPO / "params.yaml").read_text()
    default = yaml.safe_load(text)
    path.write_text(text.replace("root: null ", f"root: /datasets/{name}", 2))
    proc = run_cli(["preset", name], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    merged = yaml.safe_load(path.read_text())
    gen, expert = merged["generator"], merged["sync_expert"]
    assert merged["data"]["dataset"] == name and merged["preprocess"]["img_size"] == 128
    assert gen["weights"] == {
        "l1": 10.0,
        "store": 0.2,
        "align": 0.2,
        "recall": 0.0,
        "av_sync": 0.2,
        "vv_sync": 0.2,
        "gan": 0.2,
    }
    assert (gen["lr_g"], gen["lr_d"], gen["betas"], gen["batch_size"]) == (1e-4, 5e-4, [0.5, 0.999], 40)
    assert gen["width"] == expert["width"] == 1.0 and gen["output"] == "direct"
    assert expert["audio_width"] is None  # Wav2Lip's expert: the audio encoder as wide as the face's
    assert gen["lr_decay_from"] >= gen["max_steps"]  # constant rates
    assert (expert["lr"], expert["lr_schedule"], expert["batch_size"]) == (1e-4, "constant", 64)
    assert merged["data"]["embedded"] == default["data"]["embedded"]  # the rest is left alone
    # the command lists what it changed
    assert "generator.weights.av_sync: 0.1 -> 0.2" in proc.stdout
    assert f"data.dataset: 'embedded' -> '{name}'" in proc.stdout


def test_preset_includes_resolve_and_fail_clearly(tmp_path, monkeypatch):
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "base.yaml").write_text("generator: {lr_g: 1.0e-4, width: 1.0}\n")
    (presets / "child.yaml").write_text("include: base\ngenerator: {width: 0.5}\n")
    (presets / "loop.yaml").write_text("include: [loop2]\n")
    (presets / "loop2.yaml").write_text("include: loop\n")
    (presets / "orphan.yaml").write_text("include: nowhere\n")
    monkeypatch.setattr(config, "PRESETS_DIR", presets)
    assert config.load_preset("child") == {"generator": {"lr_g": 1e-4, "width": 0.5}}  # own keys win
    with pytest.raises(ConfigError, match="includes itself"):
        config.load_preset("loop")
    with pytest.raises(ConfigError, match="unknown preset 'nowhere' \\(included by 'orphan'\\)"):
        config.load_preset("orphan")


def test_unknown_preset(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    proc = run_cli(["preset", "voxceleb"], cwd=tmp_path)
    assert proc.returncode == 2 and "unknown preset 'voxceleb'" in proc.stderr


def test_every_requirement_maps_to_a_module_of_the_environment():
    dists, python_spec = envcheck.requirements()
    assert {"torch", "mediapipe", "pyyaml", "scikit-image", "mlflow"} <= set(dists)
    assert "snakemake" not in dists and "dvc" not in dists  # the stage commands never import them
    # the test environment is the project's: an unmapped import name would show up here
    assert envcheck.missing(dists) == []
    assert envcheck.missing(["surely-not-a-real-distribution"]) == ["surely-not-a-real-distribution"]


def test_wrong_interpreter_gets_one_clear_message_before_any_work(tmp_path):
    # -S leaves out site-packages: the interpreter has the pipeline's source but none of its requirements
    proc = subprocess.run(
        [sys.executable, "-S", "-m", "pipeline", "acquire"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "lacks" in proc.stderr and "numpy" in proc.stderr and "torch" in proc.stderr
    assert "source .venv/bin/activate" in proc.stderr and sys.executable in proc.stderr


def test_interpreter_check_reads_pyproject_without_tomllib_and_checks_the_python_version():
    import tomllib

    text = envcheck.PYPROJECT.read_text()
    project = tomllib.loads(text)["project"]
    by_pattern = envcheck.project_table_by_pattern(text)  # what Python < 3.11 reads
    assert by_pattern["dependencies"] == project["dependencies"]
    assert by_pattern["requires-python"] == project["requires-python"] == ">=3.10,<3.13"
    assert [envcheck.python_ok(">=3.10,<3.13", v) for v in ((3, 9), (3, 10), (3, 12), (3, 13))] == [
        False,
        True,
        True,
        False,
    ]
    assert envcheck.module_name("Scikit_Image") == "skimage" and envcheck.module_name("ruamel_yaml") == "ruamel.yaml"
    assert envcheck.module_name("python_speech_features") == "python_speech_features"
    assert "is Python" in envcheck.message([], ">=3.10,<3.13") and "needs >=3.10,<3.13" in envcheck.message(
        [], ">=3.10,<3.13"
    )
