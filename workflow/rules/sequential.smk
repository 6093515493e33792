rule sequential:
    """Batches of B applied one after another to the same model, each recorded as it finishes:
    a killed run continues where it stopped. The first batch reuses the cached values.
    """
    input:
        model=MODEL_MANIFEST,
        records=RECORDS,
        templates=TEMPLATES,
        stats=window_stats,
        baseline=f"{BASELINE}.nll.parquet",  # the unedited predictions, for metrics read against them
        values=lambda w: value_files(w.layer, min(int(w.size), N_SEQ)),  # the first batch's, on the unedited model
    output:
        immediate=f"{SEQUENTIAL}.immediate.parquet",
        retained=f"{SEQUENTIAL}.retained.parquet",
        quality=f"{SEQUENTIAL}.quality.parquet",
        batches=f"{SEQUENTIAL}.batches.parquet",
        edits=f"{SEQUENTIAL}.edits.safetensors",
    log:
        f"{RUN_DIR}/logs/sequential/{{algorithm}}-layer{{layer}}-b{{size}}.log",
    benchmark:
        f"{RUN_DIR}/benchmarks/sequential/{{algorithm}}-layer{{layer}}-b{{size}}.tsv"
    wildcard_constraints:
        layer=LAYER_NAME,
    conda:
        ENV
    threads: THREADS
    resources:
        **model_resources(SETTINGS.resources.sequential_runtime),
    params:
        model=MODEL_PARAMS,
        edit=edit_params,
        values=S.results(SETTINGS.values),
        evaluation=S.results(SETTINGS.evaluation),
        n=N_SEQ,
        retained_every_edits=SETTINGS.sequential.retained_every_edits,
    script:
        "../scripts/sequential.py"
