rule templates:
    """Context templates generated once by the unedited model (seeded), shared by every later stage."""
    input:
        model=MODEL_MANIFEST,
    output:
        templates=TEMPLATES,
    log:
        f"{MODEL_DIR}/logs/templates.log",
    benchmark:
        f"{MODEL_DIR}/benchmarks/templates.tsv"
    conda:
        ENV
    threads: THREADS
    resources:
        **model_resources(),
    params:
        settings=params("templates"),
    script:
        "../scripts/run.py"
