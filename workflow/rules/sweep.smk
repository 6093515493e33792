rule sweep:
    """N independent single edits at one layer, evaluated together (per-row rank-1 edits)."""
    input:
        model=MODEL_MANIFEST,
        records=RECORDS,
        values=lambda w: value_files(w.layer, N_SWEEP),
        stats=window_stats,
        templates=TEMPLATES,
        baseline=f"{BASELINE}.nll.parquet",  # the unedited predictions, for metrics read against them
    output:
        nll=f"{SWEEP}.nll.parquet",
        cases=f"{SWEEP}.cases.parquet",
    log:
        f"{RUN_DIR}/logs/sweep/{{algorithm}}-layer{{layer}}.log",
    benchmark:
        f"{RUN_DIR}/benchmarks/sweep/{{algorithm}}-layer{{layer}}.tsv"
    conda:
        ENV
    threads: THREADS
    resources:
        **model_resources(),
    params:
        model=MODEL_PARAMS,
        edit=edit_params,
        n=N_SWEEP,
    script:
        "../scripts/independent_edits.py"


checkpoint best_layer:
    """The layer with the best Score (harmonic mean of ES, PS, NS) over the sweep algorithms."""
    input:
        sweep_cases,
    output:
        BEST_LAYER,
    log:
        f"{RUN_DIR}/logs/best_layer.log",
    benchmark:
        f"{RUN_DIR}/benchmarks/best_layer.tsv"
    conda:
        ENV
    resources:
        **LIGHT,
    script:
        "../scripts/best_layer.py"
