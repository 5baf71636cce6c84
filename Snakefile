# The SyncTalkFace pipeline for Snakemake. The same stages run under DVC (dvc.yaml); both read
# params.yaml, and tests/test_orchestration.py proves that the two graphs agree (docs/design.md §3).
#   snakemake --cores all                     run everything (make run does this)
#   snakemake --profile workflow/profiles/slurm   on a SLURM cluster
# Change parameters by editing params.yaml (or `python -m pipeline preset NAME`), never with
# --config/--configfile: the commands read params.yaml, so the Snakefile refuses an override.
from snakemake.utils import min_version, validate

min_version("8.20")


configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/sync.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    input:
        rules.gather.output,
        rules.sync_check.output,
        expand(rules.train_generator.output.model, variant=VARIANTS),
        rules.evaluate.output,
        rules.demo.output,
        rules.report.output,
    default_target: True
