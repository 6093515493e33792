rule templates:
    """Context templates generated once by the unedited model (seeded), shared by every later stage."""
    input:
        MODEL_MANIFEST,
    output:
        TEMPLATES,
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
        model=MODEL_PARAMS,
        templates=S.results(SETTINGS.templates),
    script:
        "../scripts/make_templates.py"
