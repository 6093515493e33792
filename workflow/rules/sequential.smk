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
        **experiment_outputs("sequential"),
    log:
        experiment_path("sequential", "logs") + ".log",
    benchmark:
        experiment_path("sequential", "benchmarks") + ".tsv"
    wildcard_constraints:
        layer=LAYER_NAME,
    conda:
        ENV
    threads: THREADS
    resources:
        **model_resources(SETTINGS.resources.sequential_runtime),
    params:
        settings=params("sequential"),
    script:
        "../scripts/run.py"


rule sequential_live:
    """A finished sequential run read under the live protocol: its stored factors replayed batch by
    batch, never solved again (evaluation.protocols: live)."""
    input:
        model=MODEL_MANIFEST,
        records=RECORDS,
        baseline=f"{BASELINE}.live.nll.parquet",  # the unedited continuations
        edits=experiment_path("sequential") + ".edits.safetensors",
    output:
        **live_outputs("sequential"),
    log:
        experiment_path("sequential", "logs") + ".live.log",
    benchmark:
        experiment_path("sequential", "benchmarks") + ".live.tsv"
    wildcard_constraints:
        layer=LAYER_NAME,
    conda:
        ENV
    threads: THREADS
    resources:
        **model_resources(SETTINGS.resources.sequential_runtime),
    params:
        settings=params("sequential_live"),
    script:
        "../scripts/run.py"
