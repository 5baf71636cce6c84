# Evaluation of every generator variant against the ground truth and the composite baseline.


rule evaluate:
    input:
        index=str(paths.processed_index(DATASET)),
        shards=SHARDS,
        manifest=str(paths.manifest(DATASET)),
        raw=str(paths.raw_dir(DATASET)),
        expert=str(paths.model_dir("sync_expert")),
        sync_check=str(paths.sync_check_dir(DATASET)),
        generators=expand(str(paths.model_dir("generator") / "{variant}"), variant=VARIANTS),
        code=stage_code("evaluate"),
    output:
        table=directory(str(paths.eval_dir())),
        metrics=str(paths.metrics("evaluate")),
        memory=str(paths.metrics("memory")),
    params:
        **stage_params("evaluate"),
    log:
        str(paths.log("evaluate")),
    benchmark:
        "logs/benchmarks/evaluate.tsv"
    threads: workflow.cores
    conda:
        CONDA_ENV
    shell:
        stage_cmd("evaluate")


rule demo:
    input:
        manifest=str(paths.manifest(DATASET)),
        raw=str(paths.raw_dir(DATASET)),
        sync_check=str(paths.sync_check_dir(DATASET)),
        generators=expand(str(paths.model_dir("generator") / "{variant}"), variant=VARIANTS),
        code=stage_code("demo"),
    output:
        directory(str(paths.demo_dir())),
    params:
        **stage_params("demo"),
    log:
        str(paths.log("demo")),
    benchmark:
        "logs/benchmarks/demo.tsv"
    threads: workflow.cores
    conda:
        CONDA_ENV
    shell:
        stage_cmd("demo")


rule report:
    input:
        evaluation=str(paths.eval_dir()),
        demo=str(paths.demo_dir()),
        eval_metrics=str(paths.metrics("evaluate")),
        memory_metrics=str(paths.metrics("memory")),
        index=str(paths.processed_index(DATASET)),
        shards=SHARDS,
        manifest=str(paths.manifest(DATASET)),
        raw=str(paths.raw_dir(DATASET)),
        sync_check=str(paths.sync_check_dir(DATASET)),
        sync_metrics=str(paths.metrics("sync_check")),
        generators=expand(str(paths.model_dir("generator") / "{variant}"), variant=VARIANTS),
        plots=[str(paths.plot("train_sync_expert"))]
        + expand(str(paths.plot("train_generator_{variant}")), variant=VARIANTS),
        code=stage_code("report"),
    output:
        html=directory(str(paths.report_dir())),
        metrics=str(paths.metrics("report")),
    params:
        **stage_params("report"),
    log:
        str(paths.log("report")),
    benchmark:
        "logs/benchmarks/report.tsv"
    threads: 1
    conda:
        CONDA_ENV
    shell:
        stage_cmd("report")
