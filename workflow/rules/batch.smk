rule batch:
    """N edits in independent batches of B, each solved against the unedited model."""
    input:
        model=MODEL_MANIFEST,
        records=RECORDS,
        values=lambda w: value_chunks(w.layer, config["data"]["n"]),
        stats=STATS,
    output:
        nll=f"{BATCH}.nll.parquet",
        cases=f"{BATCH}.cases.parquet",
    params:
        model=config["model"],
        edit=config["edit"],
        values=config["values"],
        evaluation=config["evaluation"],
        n=config["data"]["n"],
    conda:
        ENV
    log:
        f"{RUN_DIR}/logs/batch/{{algorithm}}-layer{{layer}}-b{{size}}.log",
    benchmark:
        f"{RUN_DIR}/benchmarks/batch/{{algorithm}}-layer{{layer}}-b{{size}}.tsv"
    threads: THREADS
    resources:
        mem_mb=8000,
        gpu=GPU,
    script:
        "../../scripts/independent_edits.py"


rule baseline:
    """The unedited model's metrics, fluency and drift perplexity."""
    input:
        model=MODEL_MANIFEST,
        records=RECORDS,
    output:
        nll=f"{BASELINE}.nll.parquet",
        cases=f"{BASELINE}.cases.parquet",
        quality=f"{BASELINE}.quality.parquet",
    params:
        model=config["model"],
        evaluation=config["evaluation"],
    conda:
        ENV
    log:
        f"{RUN_DIR}/logs/baseline.log",
    benchmark:
        f"{RUN_DIR}/benchmarks/baseline.tsv"
    threads: THREADS
    resources:
        mem_mb=8000,
        gpu=GPU,
    script:
        "../../scripts/baseline.py"
