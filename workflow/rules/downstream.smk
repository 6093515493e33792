rule downstream:
    """Finding (g): the downstream check on the unedited model, after the first batch of each B
    and at every retained point of each sequential run, at the chosen layer (one job).
    """
    input:
        model=MODEL_MANIFEST,
        records=RECORDS,
        values=lambda w: (
            value_files(w.layer, max(SETTINGS.batch.sizes))
            if SETTINGS.batch.algorithms
            else []
        ),
        stats=window_stats,
        sequential=outputs_of("sequential", "edits", layer=True),
    output:
        **experiment_outputs("downstream"),
    log:
        experiment_path("downstream", "logs") + ".log",
    benchmark:
        experiment_path("downstream", "benchmarks") + ".tsv"
    wildcard_constraints:
        layer=LAYER_NAME,
    conda:
        ENV
    threads: THREADS
    resources:
        **model_resources(SETTINGS.resources.sequential_runtime),
    params:
        settings=params("downstream"),
    script:
        "../scripts/run.py"
