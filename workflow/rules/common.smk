# Shared by every rule: the one-truth check of params.yaml, its validation, and the helpers
# that take each rule's params and code inputs from the stage registry (pipeline/stages.py).
import yaml

from pipeline import paths
from pipeline.stages import STAGES, smk_params
from snakemake.exceptions import WorkflowError

PARAMS_FILE = "params.yaml"
CONDA_ENV = "../../environment.yml"  # for --use-conda; relative to workflow/rules/

with open(PARAMS_FILE, encoding="utf-8") as _fh:
    _on_disk = yaml.safe_load(_fh)
if config != _on_disk:
    _diff = sorted(
        k for k in set(_on_disk) | set(config) if _on_disk.get(k) != config.get(k)
    )
    raise WorkflowError(
        f"Snakemake's config differs from {PARAMS_FILE} in section(s) {', '.join(_diff)}: a "
        "--config/--configfile override would reach Snakemake but not the stage commands, "
        "which read params.yaml. Apply the change to params.yaml instead (edit it, run "
        "`python -m pipeline preset NAME`, or use `dvc exp run -S key=value`)."
    )

validate(config, "../schemas/params.schema.yaml", set_default=False)

DATASET = config["data"]["dataset"]
# every preprocess shard: the store that training reads (DVC depends on their folder as a whole)
SHARDS = [str(paths.processed_shard(DATASET, k)) for k in config["preprocess"]["shards"]]
# generator variants (the memory ablation) and the GPUs each training job asks for: on a GPU
# cluster (cluster.gpu) one per DDP process
VARIANTS = config["generator"]["variants"]
EXPERT_GPUS = config["sync_expert"]["processes"] if config["cluster"]["gpu"] else 0
GPUS = config["generator"]["processes"] if config["cluster"]["gpu"] else 0


def train_resources(gpus):
    """Cluster resources of the training stages (local runs ignore them). SLURM: `gpus` GPUs (none
    when 0) held by one task, because the stage starts its own DDP workers; and SIGUSR1 300 s
    before the time limit, on which the stage checkpoints and requeues its job (--requeue is
    set by the profile), so it continues where it stopped."""
    res = {"gpu": gpus, "slurm_extra": "--signal=USR1@300"}
    if gpus:
        res["tasks_per_gpu"] = 0
    return res


def stage_code(stage):
    """The stage's source files: editing one re-runs the stage."""
    return list(STAGES[stage].all_code)


def stage_params(stage):
    """The params.yaml keys the stage reads: changing one re-runs the stage."""
    return smk_params(config, stage)


def stage_cmd(stage, extra=""):
    return f"python -m pipeline {stage} --params {PARAMS_FILE} --log {{log}}{extra}"
