"""The acquire stage: build the embedded corpus, adopt a copy of LRW/LRS2 already on disk, or
download LRW/LRS2 into data.<ds>.root (`source: download`, pipeline.data.download).

Output: data/raw/<dataset>/ holding source.json (what was acquired, from where, its layout and
clip counts) and, for the embedded corpus, the corpus itself. An adopted or downloaded copy is
validated and recorded, never copied into data/raw; a copy that holds only some splits is
adopted with `data.<ds>.splits` (e.g. [test]), and the record names the splits it holds and uses.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .. import paths
from ..runtime import atomic_folder, available_cores, write_json_atomic
from ..stages import StageContext
from . import embedded, layouts

log = logging.getLogger("pipeline.acquire")


def run(view: dict, ctx: StageContext) -> dict:
    data = view["data"]
    ds = data["dataset"]
    out = paths.raw_dir(ds)
    if ds == "embedded":
        from tqdm import tqdm

        cfg = data["embedded"]
        total = cfg["train_clips"] + cfg["val_clips"] + cfg["test_clips"]
        with tqdm(total=total, desc="embedded corpus", unit="clip", disable=None) as bar:
            return embedded.build(cfg, out, available_cores(), progress=bar.update)
    section = data[ds]
    stats: dict = {}
    if section["source"] == "download":
        from . import download

        record, stats = download.acquire(ds, section)
    else:
        root = Path(section["root"]).expanduser().resolve()
        include_pretrain = bool(section.get("include_pretrain", False))
        summary = layouts.validate(ds, root, include_pretrain, section.get("splits"))
        record = {
            "dataset": ds,
            "kind": "adopted",
            "source": section["source"],
            "root": str(root),
            "include_pretrain": include_pretrain,
            **summary,
        }
    with atomic_folder(out) as tmp:
        write_json_atomic(tmp / "source.json", record)
    return {**record, **stats}
