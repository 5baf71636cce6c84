"""An evaluate-only run: a copy of LRW holding only its test split, the trained models given
(sync_expert.pretrained, generator.pretrained), the whole graph under Snakemake and under DVC:
nothing trains, every test clip is evaluated, and the two tools give the same figures."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import copy_repo, git_env, run_cli, set_params, tiny_params
from helpers import run_tool as run


@pytest.fixture(scope="module")
def test_only(tiny_run, tmp_path_factory):
    """(an LRW copy with only test/ folders, the tiny run's expert and memory generator, params)."""
    base = tmp_path_factory.mktemp("eval-only")
    src = tiny_run / "data/raw/embedded/lipread_mp4"
    for clip in sorted(src.glob("*/test/*")):
        dest = base / "LRW/lipread_mp4" / clip.relative_to(src)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(clip, dest)
    models = base / "models"
    models.mkdir()
    expert = shutil.copy2(tiny_run / "models/sync_expert/expert.pt", models / "expert.pt")
    generator = shutil.copy2(tiny_run / "models/generator/memory/generator.pt", models / "generator.pt")
    params = tiny_params()
    params["data"]["dataset"] = "lrw"
    params["data"]["lrw"].update(root=str(base / "LRW"), splits=["test"])
    params["sync_expert"]["pretrained"] = str(expert)
    params["generator"].update(variants=["memory"], pretrained={"memory": str(generator)})
    return base, params


def project(root: Path, params: dict) -> Path:
    copy_repo(root)
    set_params(root, params)
    subprocess.run(["git", "commit", "-qam", "evaluate-only params"], cwd=root, env=git_env(), check=True)
    return root


def test_a_copy_without_train_and_val_is_refused_with_the_splits_it_holds(test_only, tmp_path):
    base, params = test_only
    full = json.loads(json.dumps(params))
    full["data"]["lrw"]["splits"] = ["train", "val", "test"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(full, sort_keys=False))
    proc = run_cli(["acquire"], cwd=tmp_path)
    assert proc.returncode == 1
    assert "split folder(s) missing" in proc.stderr and "set data.lrw.splits: ['test']" in proc.stderr


def test_evaluate_only_under_snakemake_and_dvc(test_only, tiny_run, tmp_path):
    base, params = test_only
    smk = project(tmp_path / "smk", params)
    run(["snakemake", "--cores", "2"], smk)
    dvc = project(tmp_path / "dvc", params)
    run(["dvc", "repro"], dvc)
    n_test = len(list(base.glob("LRW/lipread_mp4/*/test/*.mp4")))
    for root in (smk, dvc):
        source = json.loads((root / "data/raw/lrw/source.json").read_text())
        assert source["splits"] == ["test"] and source["splits_present"] == ["test"]
        assert source["clips"] == {"test": n_test}
        expert = json.loads((root / "metrics/train_sync_expert.json").read_text())
        assert expert["pretrained"] == params["sync_expert"]["pretrained"] and "steps" not in expert
        gen = json.loads((root / "metrics/train_generator_memory.json").read_text())
        assert gen["pretrained"] == params["generator"]["pretrained"]["memory"]
        assert (root / "models/generator/memory/generator.pt").read_bytes() == Path(gen["pretrained"]).read_bytes()
        assert not (root / "models/generator/no_memory").exists()
        m = json.loads((root / "metrics/evaluate.json").read_text())
        assert m["clips"] == n_test and m["memory_lse_c"] is not None and m["memory_sharpness_mouth"] > 0
        assert (root / "reports/html/index.html").is_file()
    figures = lambda root: json.loads((root / "metrics/evaluate.json").read_text())
    assert figures(smk) == figures(dvc)  # the same graph, the same figures
    assert "Data and pipelines are up to date" in run(["dvc", "repro"], dvc).stdout
    assert "Nothing to be done" in run(["snakemake", "--cores", "2", "--dry-run"], smk).stdout
