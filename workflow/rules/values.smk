rule values:
    """Keys, v* and residuals of one chunk of records on the unedited model; reused by every
    algorithm and batch size that edits the unedited model."""
    input:
        model=MODEL_MANIFEST,
        records=RECORDS,
        templates=TEMPLATES,
    output:
        VALUES,
    params:
        model=config["model"],
        values=config["values"],
    conda:
        ENV
    log:
        f"{RUN_DIR}/logs/values/layer{{layer}}-chunk{{chunk}}.log",
    benchmark:
        f"{RUN_DIR}/benchmarks/values/layer{{layer}}-chunk{{chunk}}.tsv"
    threads: THREADS
    resources:
        mem_mb=8000,
        gpu=GPU,
    script:
        "../../scripts/compute_values.py"
