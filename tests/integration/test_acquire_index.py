"""Adopting LRW/LRS2 copies (layout checks) and the index stage (manifest and rejects)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from helpers import default_params, run_cli

from pipeline.data import layouts


def lrw_tree(root, clip_factory, bad: bool = False):
    base = root / "lipread_mp4"
    for w, word in enumerate(("ABOUT", "WORLD")):
        for s, split in enumerate(("train", "val", "test")):
            for k in range(1, 3):
                stem = base / word / split / f"{word}_{k:05d}"
                clip_factory(stem.with_suffix(".mp4"), seed=w * 10 + s * 3 + k)
                stem.with_suffix(".txt").write_text(f"Text: {word}\nConf: 5\nDuration: 0.30 seconds\n")
    if bad:
        train = base / "ABOUT" / "train"
        specs = {
            "ABOUT_00010": dict(audio=False),
            "ABOUT_00011": dict(n_frames=5),
            "ABOUT_00012": dict(n_frames=36, fps=30),
            "ABOUT_00013": dict(sample_rate=48000, channels=2),
            "ABOUT_00014": dict(size=96),
        }
        for stem, kw in specs.items():
            clip_factory(train / f"{stem}.mp4", **kw)
        full = (train / "ABOUT_00014.mp4").read_bytes()
        (train / "ABOUT_00014.mp4").write_bytes(full[: int(len(full) * 0.6)])  # truncated
        (train / "ABOUT_00015.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 300)  # corrupt
        for stem in list(specs) + ["ABOUT_00015"]:
            (train / f"{stem}.txt").write_text("Text: ABOUT\n")
    return root


def lrs2_tree(root, clip_factory):
    main = root / "mvlrs_v1" / "main"
    ids = {"train": ["600001/00001", "600001/00002"], "val": ["600002/00001"], "test": ["600003/00001"]}
    for split, clips in ids.items():
        lines = []
        for k, c in enumerate(clips):
            clip_factory((main / c).with_suffix(".mp4"), seed=k)
            (main / c).with_suffix(".txt").write_text("Text:  HELLO THERE\nConf:  4\n\nWORD START END ASDSCORE\n")
            lines.append(c + (" NF" if split == "test" else ""))
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    (root / "mvlrs_v1" / "pretrain").mkdir(parents=True)
    return root


def params_for(tmp_path, dataset, root, **extra):
    p = default_params()
    p["data"]["dataset"] = dataset
    p["data"][dataset]["root"] = str(root)
    p["data"][dataset].update(extra)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def test_lrw_adopt_and_index_with_bad_clips(tmp_path, clip_factory):
    root = lrw_tree(tmp_path / "LRW", clip_factory, bad=True)
    work = tmp_path / "proj"
    work.mkdir()
    params_for(work, "lrw", root)
    proc = run_cli(["acquire"], cwd=work, check=True)
    record = json.loads((work / "data/raw/lrw/source.json").read_text())
    assert record["root"] == str(root) and record["kind"] == "adopted"
    assert record["clips"] == {"train": 10, "val": 4, "test": 4}
    assert not list((work / "data/raw/lrw").glob("*.mp4"))  # recorded, not copied
    proc = run_cli(["index"], cwd=work, check=True)
    assert "clips=14" in proc.stdout and "rejected=4" in proc.stdout
    man = pd.read_parquet(work / "data/manifests/lrw.parquet")
    rej = pd.read_parquet(work / "data/manifests/lrw_rejects.parquet").set_index("clip_id")["reason"]
    assert rej["ABOUT/train/ABOUT_00010"] == "no audio stream"
    assert rej["ABOUT/train/ABOUT_00011"].startswith("too short")
    assert "ABOUT/train/ABOUT_00014" in rej  # truncated: mismatch or decode failure
    assert rej["ABOUT/train/ABOUT_00015"].startswith("unreadable")
    m = man.set_index("clip_id")
    assert m.loc["ABOUT/train/ABOUT_00012", "needs_resample"] and m.loc["ABOUT/train/ABOUT_00012", "fps"] == 30
    assert m.loc["ABOUT/train/ABOUT_00013", "audio_rate"] == 48000
    assert not m.loc["ABOUT/train/ABOUT_00001", "needs_resample"]
    assert set(man.columns) >= {
        "clip_id",
        "dataset",
        "split",
        "word",
        "speaker",
        "text",
        "video_path",
        "n_frames",
        "fps",
        "duration_s",
        "has_audio",
        "sha1",
    }
    assert m.loc["WORLD/test/WORLD_00002", ["split", "word", "text", "n_frames"]].tolist() == [
        "test",
        "WORLD",
        "WORLD",
        29,
    ]
    metrics = json.loads((work / "metrics/index.json").read_text())
    assert metrics["clips"] == 14 and metrics["rejected"] == 4


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda r: __import__("shutil").rmtree(r / "lipread_mp4/WORLD/val"), "WORLD/val/"),
        (lambda r: (r / "lipread_mp4/ABOUT/test/ABOUT_00002.txt").unlink(), "ABOUT_00002.txt"),
        (lambda r: __import__("shutil").rmtree(r / "lipread_mp4"), "no lipread_mp4/"),
    ],
)
def test_lrw_partial_layout_is_named(tmp_path, clip_factory, damage, expected):
    root = lrw_tree(tmp_path / "LRW", clip_factory)
    damage(root)
    work = tmp_path / "proj"
    work.mkdir()
    params_for(work, "lrw", root)
    proc = run_cli(["acquire"], cwd=work)
    assert proc.returncode == 1 and expected in proc.stderr, proc.stderr
    assert not (work / "data").exists()


def test_lrs2_adopt_and_index(tmp_path, clip_factory):
    root = lrs2_tree(tmp_path / "LRS2", clip_factory)
    assert layouts.validate_lrs2(root)["clips"] == {"train": 2, "val": 1, "test": 1}
    work = tmp_path / "proj"
    work.mkdir()
    params_for(work, "lrs2", root)
    run_cli(["acquire"], cwd=work, check=True)
    run_cli(["index"], cwd=work, check=True)
    man = pd.read_parquet(work / "data/manifests/lrs2.parquet").set_index("clip_id")
    assert sorted(man.index) == ["main/600001/00001", "main/600001/00002", "main/600002/00001", "main/600003/00001"]
    assert man.loc["main/600003/00001", "split"] == "test"  # the ' NF' token is not part of the id
    assert man.loc["main/600001/00002", "text"] == "HELLO THERE"
    assert man.loc["main/600001/00002", "speaker"] == "600001"


def test_lrs2_missing_pieces_are_named(tmp_path, clip_factory):
    root = lrs2_tree(tmp_path / "LRS2", clip_factory)
    (root / "val.txt").unlink()
    (root / "mvlrs_v1/main/600001/00002.mp4").unlink()
    with pytest.raises(layouts.LayoutError) as err:
        layouts.validate_lrs2(root)
    msg = str(err.value)
    assert "val.txt is missing" in msg and "600001/00002.mp4" in msg
    with pytest.raises(layouts.LayoutError, match="pretrain"):
        (root / "mvlrs_v1/pretrain").rmdir()
        (root / "val.txt").write_text("600002/00001\n")
        (root / "mvlrs_v1/main/600001/00002.mp4").write_bytes(b"")
        layouts.validate_lrs2(root, include_pretrain=True)


def test_index_without_acquire_says_what_to_run(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(default_params(), sort_keys=False))
    proc = run_cli(["index"], cwd=tmp_path)
    assert proc.returncode == 1 and "run the acquire stage first" in proc.stderr
