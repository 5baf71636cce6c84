# Data acquisition and the clip manifest.


rule acquire:
    input:
        code=stage_code("acquire"),
    output:
        directory(str(paths.raw_dir(DATASET))),
    params:
        **stage_params("acquire"),
    log:
        str(paths.log("acquire")),
    benchmark:
        "logs/benchmarks/acquire.tsv"
    threads: workflow.cores
    conda:
        CONDA_ENV
    shell:
        stage_cmd("acquire")


rule index:
    input:
        raw=str(paths.raw_dir(DATASET)),
        code=stage_code("index"),
    output:
        manifest=str(paths.manifest(DATASET)),
        rejects=str(paths.rejects(DATASET)),
        metrics=str(paths.metrics("index")),
    params:
        **stage_params("index"),
    log:
        str(paths.log("index")),
    benchmark:
        "logs/benchmarks/index.tsv"
    threads: workflow.cores
    conda:
        CONDA_ENV
    shell:
        stage_cmd("index")


rule preprocess:
    input:
        manifest=str(paths.manifest(DATASET)),
        code=stage_code("preprocess"),
    output:
        directory(str(paths.processed_shard(DATASET, "{shard}"))),
    params:
        **stage_params("preprocess"),
    log:
        str(paths.shard_log("{shard}")),
    benchmark:
        "logs/benchmarks/preprocess-{shard}.tsv"
    threads: workflow.cores
    conda:
        CONDA_ENV
    shell:
        stage_cmd("preprocess", " --shard {wildcards.shard}")


rule gather:
    input:
        shards=SHARDS,
        rejects=str(paths.rejects(DATASET)),
        code=stage_code("gather"),
    output:
        index=str(paths.processed_index(DATASET)),
        failures=str(paths.processed_failures(DATASET)),
        metrics=str(paths.metrics("gather")),
    params:
        **stage_params("gather"),
    log:
        str(paths.log("gather")),
    benchmark:
        "logs/benchmarks/gather.tsv"
    threads: 1
    conda:
        CONDA_ENV
    shell:
        stage_cmd("gather")
