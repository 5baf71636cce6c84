"""The stage registry: every stage's module, the params it reads, its data inputs, its code.

One place for both orchestrators' change detection and for the runner (pipeline/runner.py): the
Snakefile builds each rule's `params:` and code `input:` from here, `dvc.yaml` lists the same
params, code and data inputs (tests/integration/test_orchestration.py proves they agree), and the runner gives
a stage only the params it declares, fingerprints its declared inputs and calls its module's
`run(view, ctx)`: the one signature of every stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Infrastructure (cli, config, stages, paths, tracking, runtime, errors, mp_solutions) is deliberately not a
# code input: it does not change what a stage computes, and editing a help text must not re-run
# hours of training. A stage's code inputs are the modules that compute its outputs.
COMMON_CODE: tuple[str, ...] = ()


@dataclass(frozen=True)
class StageSpec:
    name: str
    params: tuple[str, ...]  # dotted keys of params.yaml the stage reads
    code: tuple[str, ...]  # source files (repo-relative) whose change re-runs the stage
    summary: str
    module: str  # the module whose run(view, ctx) is the stage
    # data inputs, repo-relative; {dataset} is data.dataset (dvc.yaml writes ${data.dataset})
    inputs: tuple[str, ...] = ()
    argument: str | None = None  # the stage's own command-line argument: "shard" or "variant"
    # "run": an MLflow run fingerprinted by params and inputs; "after": fingerprinted once the
    # stage has made its inputs (acquire); "none": no run (a preprocess shard: gather records them)
    tracking: str = "run"

    @property
    def all_code(self) -> tuple[str, ...]:
        return COMMON_CODE + self.code

    def input_paths(self, view: dict) -> list[Path]:
        return [Path(t.format(dataset=view["data"]["dataset"])) for t in self.inputs]


@dataclass
class StageContext:
    """What a stage gets besides its params view: the MLflow run to log to (None when untracked),
    and its own argument (the preprocess shard, the generator variant)."""

    tracker: object | None = None
    shard: int | None = None
    variant: str | None = None


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
                "pipeline/data/identities.py",
                "pipeline/data/visemes.py",
                "pipeline/data/download.py",
                "pipeline/data/fetch.py",
                "pipeline/data/archive.py",
                "pipeline/data/httpclient.py",
                "pipeline/io/ffmpeg.py",
            ),
            summary="build the embedded corpus, or adopt or download LRW/LRS2",
            module="pipeline.data.acquire",
            tracking="after",
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
            module="pipeline.data.manifest",
            inputs=("data/raw/{dataset}",),
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
                "pipeline/geometry.py",
            ),
            summary="faces, aligned crops, mel and alignment for one shard of clips (--shard K)",
            module="pipeline.preprocess.run",
            inputs=("data/manifests/{dataset}.parquet",),
            argument="shard",
            tracking="none",
        ),
        StageSpec(
            name="gather",
            params=("data.dataset", "preprocess"),
            code=(
                "pipeline/preprocess/gather.py",
                "pipeline/io/store.py",
            ),
            summary="index all shards and collect every rejected clip with its reason",
            module="pipeline.preprocess.gather",
            inputs=("data/processed/{dataset}/shards", "data/manifests/{dataset}_rejects.parquet"),
        ),
        StageSpec(
            name="train_sync_expert",
            params=("data.dataset", "preprocess.img_size", "sync_expert"),
            code=(
                "pipeline/train/sync_expert.py",
                "pipeline/train/loop.py",
                "pipeline/train/trainer.py",
                "pipeline/nets/expert.py",
                "pipeline/nets/checkpoints.py",
                "pipeline/models/syncnet.py",
                "pipeline/data/datasets.py",
                "pipeline/io/store.py",
                "pipeline/io/align.py",
                "pipeline/models/layout.py",
                "pipeline/io/audio.py",
                "pipeline/io/ffmpeg.py",
            ),
            summary="pretrain the lip-sync expert (or import Wav2Lip's: sync_expert.pretrained)",
            module="pipeline.train.sync_expert",
            inputs=("data/processed/{dataset}/index.parquet", "data/processed/{dataset}/shards"),
        ),
        StageSpec(
            name="sync_check",
            params=("data.dataset", "sync_check"),
            code=(
                "pipeline/train/sync_check.py",
                "pipeline/nets/expert.py",
                "pipeline/nets/checkpoints.py",
                "pipeline/nets/sync.py",
                "pipeline/models/syncnet.py",
                "pipeline/io/store.py",
                "pipeline/io/align.py",
                "pipeline/models/layout.py",
                "pipeline/io/audio.py",
                "pipeline/io/ffmpeg.py",
            ),
            summary="every clip's audio/video offset and confidence; clips out of sync are excluded",
            module="pipeline.train.sync_check",
            inputs=("data/processed/{dataset}/index.parquet", "data/processed/{dataset}/shards", "models/sync_expert"),
        ),
        StageSpec(
            name="train_generator",
            params=("data.dataset", "preprocess.img_size", "generator"),
            code=(
                "pipeline/train/generator.py",
                "pipeline/train/gen_step.py",
                "pipeline/train/gen_losses.py",
                "pipeline/train/gen_report.py",
                "pipeline/train/loop.py",
                "pipeline/train/trainer.py",
                "pipeline/nets/expert.py",
                "pipeline/nets/checkpoints.py",
                "pipeline/nets/sync.py",
                "pipeline/models/generator.py",
                "pipeline/models/memory.py",
                "pipeline/models/discriminator.py",
                "pipeline/models/syncnet.py",
                "pipeline/nets/generate.py",
                "pipeline/nets/metrics.py",
                "pipeline/data/datasets.py",
                "pipeline/io/store.py",
                "pipeline/io/align.py",
                "pipeline/models/layout.py",
                "pipeline/geometry.py",
                "pipeline/io/audio.py",
                "pipeline/io/ffmpeg.py",
            ),
            summary="train the SyncTalkFace generator of one variant (--variant memory|no_memory)",
            module="pipeline.train.generator",
            inputs=(
                "data/processed/{dataset}/index.parquet",
                "data/processed/{dataset}/shards",
                "models/sync_expert",
                "data/sync_check/{dataset}",
            ),
            argument="variant",
        ),
        StageSpec(
            name="evaluate",
            params=("data.dataset", "generator.variants", "evaluate"),
            code=(
                "pipeline/evaluate/run.py",
                "pipeline/evaluate/scoring.py",
                "pipeline/nets/metrics.py",
                "pipeline/evaluate/landmarks.py",
                "pipeline/evaluate/lse.py",
                "pipeline/nets/generate.py",
                "pipeline/evaluate/memory_analysis.py",
                "pipeline/data/visemes.py",
                "pipeline/data/speech.py",
                "pipeline/models/syncnet_v2.py",
                "pipeline/models/inception.py",
                "pipeline/models/generator.py",
                "pipeline/models/memory.py",
                "pipeline/models/syncnet.py",
                "pipeline/nets/expert.py",
                "pipeline/nets/checkpoints.py",
                "pipeline/nets/sync.py",
                "pipeline/io/store.py",
                "pipeline/io/align.py",
                "pipeline/io/ffmpeg.py",
                "pipeline/models/layout.py",
                "pipeline/geometry.py",
                "pipeline/io/audio.py",
            ),
            summary="PSNR, SSIM, LMD, LSE-D, LSE-C of every variant, the ground truth and the composite baseline; "
            "the memory analysis (metrics/memory.json)",
            module="pipeline.evaluate.run",
            inputs=(
                "data/processed/{dataset}/index.parquet",
                "data/processed/{dataset}/shards",
                "data/manifests/{dataset}.parquet",
                "data/raw/{dataset}",
                "models/sync_expert",
                "data/sync_check/{dataset}",
                "models/generator",
            ),
        ),
        StageSpec(
            name="demo",
            params=("data.dataset", "generator.variants"),
            code=(
                "pipeline/evaluate/demo.py",
                "pipeline/infer.py",
                "pipeline/nets/generate.py",
                "pipeline/nets/checkpoints.py",
                "pipeline/nets/sync.py",
                "pipeline/preprocess/faces.py",
                "pipeline/preprocess/crops.py",
                "pipeline/models/generator.py",
                "pipeline/models/memory.py",
                "pipeline/io/audio.py",
                "pipeline/io/align.py",
                "pipeline/io/ffmpeg.py",
                "pipeline/nets/metrics.py",
                "pipeline/evaluate/mouth_sync.py",
                "pipeline/models/syncnet.py",
                "pipeline/models/layout.py",
                "pipeline/geometry.py",
            ),
            summary="a test clip's face driven by another clip's speech (reports/demo/demo.mp4)",
            module="pipeline.evaluate.demo",
            inputs=(
                "data/manifests/{dataset}.parquet",
                "data/raw/{dataset}",
                "data/sync_check/{dataset}",
                "models/generator",
            ),
        ),
        StageSpec(
            name="report",
            params=("data.dataset", "generator.variants"),
            code=(
                "pipeline/evaluate/report.py",
                "pipeline/evaluate/memory_analysis.py",
                "pipeline/evaluate/anchors.yaml",
                "pipeline/nets/generate.py",
                "pipeline/models/generator.py",
                "pipeline/models/memory.py",
                "pipeline/evaluate/run.py",
                "pipeline/evaluate/scoring.py",
                "pipeline/nets/metrics.py",
                "pipeline/evaluate/landmarks.py",
                "pipeline/evaluate/lse.py",
                "pipeline/models/syncnet.py",
                "pipeline/models/syncnet_v2.py",
                "pipeline/models/inception.py",
                "pipeline/models/layout.py",
                "pipeline/nets/expert.py",
                "pipeline/nets/checkpoints.py",
                "pipeline/nets/sync.py",
                "pipeline/io/store.py",
                "pipeline/io/align.py",
                "pipeline/io/audio.py",
                "pipeline/io/ffmpeg.py",
                "pipeline/geometry.py",
            ),
            summary="reports/html/index.html: metrics beside published figures, curves, samples, memory analysis",
            module="pipeline.evaluate.report",
            inputs=(
                "reports/eval",
                "reports/demo",
                "metrics/evaluate.json",
                "metrics/memory.json",
                "data/processed/{dataset}/index.parquet",
                "data/processed/{dataset}/shards",
                "data/manifests/{dataset}.parquet",
                "data/raw/{dataset}",
                "data/sync_check/{dataset}",
                "metrics/sync_check.json",
                "models/generator",
                "plots",
            ),
        ),
    )
}


def smk_params(config: dict, stage: str) -> dict:
    """Snakemake `params:` for a stage: one entry per declared key ('.' written as '__')."""
    from .config import get

    return {key.replace(".", "__"): get(config, key) for key in STAGES[stage].params}


def code_files(stage: str) -> list[Path]:
    """The stage's code files (absolute paths, those that exist): part of its work folder's
    fingerprint, so that changed code starts a fresh run instead of resuming an old one."""
    root = Path(__file__).resolve().parents[1]
    return [root / f for f in STAGES[stage].all_code if (root / f).is_file()]
