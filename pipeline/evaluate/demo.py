"""The demo stage: one test clip's face driven by another test clip's speech, through the same
code as `python -m pipeline infer`, into reports/demo/ (shown in the report)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd

from .. import paths
from ..errors import PipelineError
from ..infer import infer
from ..runtime import write_json_atomic


def pick_clips(ds: str) -> tuple[str, str]:
    """(face video, speech video): the first two test clips of different words kept by sync_check."""
    manifest = pd.read_parquet(paths.manifest(ds))
    test = manifest[manifest.split == "test"].sort_values("clip_id")
    table = paths.sync_check_dir(ds) / "offsets.parquet"
    if table.is_file():
        t = pd.read_parquet(table)
        kept = test[~test.clip_id.isin(set(t.clip_id[t.excluded]))]
        test = kept if len(kept) >= 2 else test
    if test.empty:
        raise PipelineError(f"no test clip in {paths.manifest(ds)} for the demo")
    face = test.iloc[0]
    others = test[test.word != face.word] if "word" in test else test.iloc[1:]
    speech = (others if not others.empty else test).iloc[-1]
    return str(face.video_path), str(speech.video_path)


def run(view: dict) -> dict:
    ds = view["data"]["dataset"]
    variants = view["generator"]["variants"]
    variant = "memory" if "memory" in variants else variants[0]
    ckpt = paths.model_dir("generator") / variant / "generator.pt"
    face, speech = pick_clips(ds)
    out = paths.demo_dir()
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    summary = infer(Path(face), Path(speech), ckpt, tmp / "demo.mp4")
    write_json_atomic(tmp / "demo.json", {"face": face, "speech": speech, "variant": variant, **summary})
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return summary
