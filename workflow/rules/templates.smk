rule templates:
    """Context templates generated once by the unedited model (seeded), shared by every later stage."""
    input:
        MODEL_MANIFEST,
    output:
        TEMPLATES,
    params:
        model=MODEL_PARAMS,
        templates=S.results(SETTINGS.templates),
    conda:
        ENV
    log:
        f"{MODEL_DIR}/logs/templates.log",
    benchmark:
        f"{MODEL_DIR}/benchmarks/templates.tsv"
    threads: THREADS
    resources:
        **model_resources(),
    script:
        "../scripts/make_templates.py"
