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
