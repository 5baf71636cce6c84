"""The stage registry: what each stage reads from params.yaml and which source files it runs.

One place for both orchestrators' change detection: the Snakefile builds each rule's `params:`
and code `input:` from here, `dvc.yaml` lists the same (tests/test_orchestration.py proves
they agree), and the CLI gives a stage only the params it declares here.
"""

from __future__ import annotations

from dataclasses import dataclass

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
                "pipeline/geometry.py",
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
                "pipeline/models/layout.py",
                "pipeline/io/audio.py",
                "pipeline/io/ffmpeg.py",
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
                "pipeline/models/layout.py",
                "pipeline/io/audio.py",
                "pipeline/io/ffmpeg.py",
            ),
            summary="every clip's audio/video offset and confidence; clips out of sync are excluded",
        ),
        StageSpec(
            name="train_generator",
            params=("data.dataset", "preprocess.img_size", "generator"),
            code=(
                "pipeline/train/generator.py",
                "pipeline/train/gen_losses.py",
                "pipeline/train/gen_report.py",
                "pipeline/train/loop.py",
                "pipeline/train/expert_io.py",
                "pipeline/train/sync_check.py",
                "pipeline/models/generator.py",
                "pipeline/models/memory.py",
                "pipeline/models/discriminator.py",
                "pipeline/models/syncnet.py",
                "pipeline/evaluate/generate.py",
                "pipeline/evaluate/metrics.py",
                "pipeline/data/datasets.py",
                "pipeline/io/store.py",
                "pipeline/io/align.py",
                "pipeline/models/layout.py",
                "pipeline/geometry.py",
                "pipeline/io/audio.py",
                "pipeline/io/ffmpeg.py",
            ),
            summary="train the SyncTalkFace generator of one variant (--variant memory|no_memory)",
        ),
        StageSpec(
            name="evaluate",
            params=("data.dataset", "generator.variants", "evaluate"),
            code=(
                "pipeline/evaluate/run.py",
                "pipeline/evaluate/metrics.py",
                "pipeline/evaluate/landmarks.py",
                "pipeline/evaluate/lse.py",
                "pipeline/evaluate/generate.py",
                "pipeline/evaluate/memory_analysis.py",
                "pipeline/data/face_anim.py",
                "pipeline/data/speech.py",
                "pipeline/models/syncnet_v2.py",
                "pipeline/models/generator.py",
                "pipeline/models/memory.py",
                "pipeline/models/syncnet.py",
                "pipeline/train/expert_io.py",
                "pipeline/train/sync_check.py",
                "pipeline/train/gen_report.py",
                "pipeline/io/store.py",
                "pipeline/io/align.py",
                "pipeline/io/ffmpeg.py",
                "pipeline/models/layout.py",
                "pipeline/geometry.py",
                "pipeline/io/audio.py",
            ),
            summary="PSNR, SSIM, LMD, LSE-D, LSE-C of every variant, the ground truth and the composite baseline; "
            "the memory analysis (metrics/memory.json)",
        ),
        StageSpec(
            name="demo",
            params=("data.dataset", "generator.variants"),
            code=(
                "pipeline/evaluate/demo.py",
                "pipeline/infer.py",
                "pipeline/evaluate/generate.py",
                "pipeline/preprocess/faces.py",
                "pipeline/preprocess/crops.py",
                "pipeline/models/generator.py",
                "pipeline/models/memory.py",
                "pipeline/io/audio.py",
                "pipeline/io/align.py",
                "pipeline/io/ffmpeg.py",
                "pipeline/evaluate/metrics.py",
                "pipeline/evaluate/mouth_sync.py",
                "pipeline/models/syncnet.py",
                "pipeline/models/layout.py",
                "pipeline/geometry.py",
            ),
            summary="a test clip's face driven by another clip's speech (reports/demo/demo.mp4)",
        ),
        StageSpec(
            name="report",
            params=("data.dataset", "generator.variants"),
            code=(
                "pipeline/evaluate/report.py",
                "pipeline/evaluate/memory_analysis.py",
                "pipeline/evaluate/anchors.yaml",
                "pipeline/evaluate/generate.py",
                "pipeline/models/generator.py",
                "pipeline/models/memory.py",
                "pipeline/evaluate/run.py",
                "pipeline/evaluate/metrics.py",
                "pipeline/evaluate/landmarks.py",
                "pipeline/evaluate/lse.py",
                "pipeline/models/syncnet.py",
                "pipeline/models/syncnet_v2.py",
                "pipeline/models/layout.py",
                "pipeline/train/expert_io.py",
                "pipeline/train/gen_report.py",
                "pipeline/train/sync_check.py",
                "pipeline/io/store.py",
                "pipeline/io/align.py",
                "pipeline/io/audio.py",
                "pipeline/io/ffmpeg.py",
                "pipeline/geometry.py",
            ),
            summary="reports/html/index.html: metrics beside published figures, curves, samples, memory analysis",
        ),
    )
}


def smk_params(config: dict, stage: str) -> dict:
    """Snakemake `params:` for a stage: one entry per declared key ('.' written as '__')."""
    from .config import get

    return {key.replace(".", "__"): get(config, key) for key in STAGES[stage].params}
