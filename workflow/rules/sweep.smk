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
        **experiment_outputs("sweep"),
    log:
        experiment_path("sweep", "logs") + ".log",
    benchmark:
        experiment_path("sweep", "benchmarks") + ".tsv"
    conda:
        ENV
    threads: THREADS
    resources:
        **model_resources(),
    params:
        settings=params("sweep"),
    script:
        "../scripts/run.py"


rule sweep_live:
    """The sweep's edits read under the live protocol (evaluation.protocols: live)."""
    input:
        model=MODEL_MANIFEST,
        records=RECORDS,
        values=lambda w: value_files(w.layer, N_SWEEP),
        stats=window_stats,
        templates=TEMPLATES,
        baseline=f"{BASELINE}.live.nll.parquet",  # the unedited continuations
    output:
        **live_outputs("sweep"),
    log:
        experiment_path("sweep", "logs") + ".live.log",
    benchmark:
        experiment_path("sweep", "benchmarks") + ".live.tsv"
    conda:
        ENV
    threads: THREADS
    resources:
        **model_resources(),
    params:
        settings=params("sweep_live"),
    script:
        "../scripts/run.py"


checkpoint best_layer:
    """The layer with the best Score (harmonic mean of ES, PS, NS) over the sweep algorithms."""
    input:
        cases=outputs_of("sweep", "cases", live=False),  # the layer is chosen teacher-forced
    output:
        best=BEST_LAYER,
    log:
        f"{RUN_DIR}/logs/best_layer.log",
    benchmark:
        f"{RUN_DIR}/benchmarks/best_layer.tsv"
    conda:
        ENV
    resources:
        **LIGHT,
    params:
        settings=params("best_layer"),
    script:
        "../scripts/run.py"
