# The lip-sync expert and the per-clip A/V offset check.


rule train_sync_expert:
    input:
        index=str(paths.processed_index(DATASET)),
        shards=SHARDS,
        code=stage_code("train_sync_expert"),
    output:
        model=directory(str(paths.model_dir("sync_expert"))),
        metrics=str(paths.metrics("train_sync_expert")),
        plot=str(paths.plot("train_sync_expert")),
    params:
        **stage_params("train_sync_expert"),
    log:
        str(paths.log("train_sync_expert")),
    benchmark:
        "logs/benchmarks/train_sync_expert.tsv"
    threads: workflow.cores
    resources:
        **train_resources(EXPERT_GPUS),
    conda:
        CONDA_ENV
    shell:
        stage_cmd("train_sync_expert")


rule sync_check:
    input:
        index=str(paths.processed_index(DATASET)),
        shards=SHARDS,
        expert=str(paths.model_dir("sync_expert")),
        code=stage_code("sync_check"),
    output:
        table=directory(str(paths.sync_check_dir(DATASET))),
        metrics=str(paths.metrics("sync_check")),
    params:
        **stage_params("sync_check"),
    log:
        str(paths.log("sync_check")),
    benchmark:
        "logs/benchmarks/sync_check.tsv"
    threads: workflow.cores
    conda:
        CONDA_ENV
    shell:
        stage_cmd("sync_check")


rule train_generator:
    input:
        index=str(paths.processed_index(DATASET)),
        shards=SHARDS,
        expert=str(paths.model_dir("sync_expert")),
        sync_check=str(paths.sync_check_dir(DATASET)),
        code=stage_code("train_generator"),
    output:
        model=directory(str(paths.model_dir("generator") / "{variant}")),
        metrics=str(paths.metrics("train_generator_{variant}")),
        plot=str(paths.plot("train_generator_{variant}")),
    params:
        **stage_params("train_generator"),
    log:
        str(paths.log("train_generator-{variant}")),
    benchmark:
        "logs/benchmarks/train_generator-{variant}.tsv"
    wildcard_constraints:
        variant="|".join(VARIANTS),
    threads: workflow.cores
    resources:
        **train_resources(GPUS),
    conda:
        CONDA_ENV
    shell:
        stage_cmd("train_generator", " --variant {wildcards.variant}")
