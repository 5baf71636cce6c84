"""The stage registry: what each stage reads from params.yaml and which source files it runs.

One place for both orchestrators' change detection: the Snakefile builds each rule's `params:`
and code `input:` from here, `dvc.yaml` lists the same (tests/test_orchestration.py proves
they agree), and the CLI gives a stage only the params it declares here.
"""
from __future__ import annotations

from dataclasses import dataclass

# Infrastructure (cli, config, stages, paths, tracking, runtime, errors) is deliberately not a
# code input: it does not change what a stage computes, and editing a help text must not re-run
# hours of training. A stage's code inputs are the modules that compute its outputs.
COMMON_CODE: tuple[str, ...] = ()


@dataclass(frozen=True)
class StageSpec:
    name: str
    params: tuple[str, ...]  # dotted keys of params.yaml the stage reads
    code: tuple[str, ...]  # source files (repo-relative) whose change re-runs the stage
    summary: str

    @property
    def all_code(self) -> tuple[str, ...]:
        return COMMON_CODE + self.code


STAGES: dict[str, StageSpec] = {
    spec.name: spec
    for spec in (
        StageSpec(
            name="acquire",
            params=("data",),
            code=(
                "pipeline/data/acquire.py",
                "pipeline/data/layouts.py",
                "pipeline/data/embedded.py",
                "pipeline/data/speech.py",
                "pipeline/data/face_anim.py",
                "pipeline/data/download.py",
                "pipeline/data/archive.py",
                "pipeline/data/httpclient.py",
                "pipeline/io/ffmpeg.py",
            ),
            summary="build the embedded corpus, or adopt or download LRW/LRS2",
        ),
        StageSpec(
            name="index",
            params=("data.dataset", "index"),
            code=(
                "pipeline/data/manifest.py",
                "pipeline/data/layouts.py",
                "pipeline/io/ffmpeg.py",
            ),
            summary="probe every clip and write the manifest and the rejects table",
        ),
        StageSpec(
            name="preprocess",
            params=("data.dataset", "preprocess"),
            code=(
                "pipeline/preprocess/run.py",
                "pipeline/preprocess/faces.py",
                "pipeline/preprocess/crops.py",
                "pipeline/io/audio.py",
                "pipeline/io/store.py",
                "pipeline/io/ffmpeg.py",
            ),
            summary="faces, aligned crops, mel and alignment for one shard of clips (--shard K)",
        ),
        StageSpec(
            name="gather",
            params=("data.dataset", "preprocess"),
            code=(
                "pipeline/preprocess/gather.py",
                "pipeline/io/store.py",
            ),
            summary="index all shards and collect every rejected clip with its reason",
        ),
        StageSpec(
            name="train_sync_expert",
            params=("data.dataset", "preprocess.img_size", "sync_expert"),
            code=(
                "pipeline/train/sync_expert.py",
                "pipeline/train/loop.py",
                "pipeline/train/expert_io.py",
                "pipeline/models/syncnet.py",
                "pipeline/data/datasets.py",
                "pipeline/io/store.py",
                "pipeline/io/align.py",
            ),
            summary="pretrain the lip-sync expert (or import Wav2Lip's: sync_expert.pretrained)",
        ),
        StageSpec(
            name="sync_check",
            params=("data.dataset", "sync_check"),
            code=(
                "pipeline/train/sync_check.py",
                "pipeline/train/expert_io.py",
                "pipeline/models/syncnet.py",
                "pipeline/io/store.py",
                "pipeline/io/align.py",
            ),
            summary="every clip's audio/video offset and confidence; clips out of sync are excluded",
        ),
    )
}


def smk_params(config: dict, stage: str) -> dict:
    """Snakemake `params:` for a stage: one entry per declared key ('.' written as '__')."""
    from .config import get

    return {key.replace(".", "__"): get(config, key) for key in STAGES[stage].params}
