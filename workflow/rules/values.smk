rule values:
    """Keys, v* and residuals of a range of records on the unedited model; reused by every
    algorithm and batch size that edits the unedited model."""
    input:
        model=MODEL_MANIFEST,
        records=RECORDS,
        templates=TEMPLATES,
    output:
        values=VALUES,
    log:
        f"{RUN_DIR}/logs/values/layer{{layer}}-records{{start}}-{{end}}.log",
    benchmark:
        f"{RUN_DIR}/benchmarks/values/layer{{layer}}-records{{start}}-{{end}}.tsv"
    wildcard_constraints:
        layer=r"\d+",  # one layer: a window's values are its last layer's
        start=r"\d+",
        end=r"\d+",
    conda:
        ENV
    threads: THREADS
    resources:
        **model_resources(),
    params:
        settings=params("values"),
    script:
        "../scripts/run.py"
