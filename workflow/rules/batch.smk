rule batch:
    """N edits in independent batches of B, each solved against the unedited model, at the chosen
    layer or spread over the chosen window."""
    input:
        model=MODEL_MANIFEST,
        records=RECORDS,
        values=lambda w: value_files(w.layer, SETTINGS.data.n),
        stats=window_stats,
        templates=TEMPLATES,
        baseline=f"{BASELINE}.nll.parquet",  # the unedited predictions, for metrics read against them
    output:
        **experiment_outputs("batch"),
    log:
        experiment_path("batch", "logs") + ".log",
    benchmark:
        experiment_path("batch", "benchmarks") + ".tsv"
    wildcard_constraints:
        layer=LAYER_NAME,
    conda:
        ENV
    threads: THREADS
    resources:
        **model_resources(),
    params:
        settings=params("batch"),
    script:
        "../scripts/run.py"


rule baseline:
    """The unedited model's metrics, fluency and drift perplexity."""
    input:
        model=MODEL_MANIFEST,
        records=RECORDS,
    output:
        nll=f"{BASELINE}.nll.parquet",
        cases=f"{BASELINE}.cases.parquet",
        quality=f"{BASELINE}.quality.parquet",
    log:
        f"{RUN_DIR}/logs/baseline.log",
    benchmark:
        f"{RUN_DIR}/benchmarks/baseline.tsv"
    conda:
        ENV
    threads: THREADS
    resources:
        **model_resources(),
    params:
        settings=params("baseline"),
    script:
        "../scripts/run.py"


rule batch_live:
    """The batch runs read under the live protocol: the same edits, solved from the same files, and
    each case's prompts answered by greedy decoding (evaluation.protocols: live)."""
    input:
        model=MODEL_MANIFEST,
        records=RECORDS,
        values=lambda w: value_files(w.layer, SETTINGS.data.n),
        stats=window_stats,
        templates=TEMPLATES,
        baseline=f"{BASELINE}.live.nll.parquet",  # the unedited continuations
    output:
        **live_outputs("batch"),
    log:
        experiment_path("batch", "logs") + ".live.log",
    benchmark:
        experiment_path("batch", "benchmarks") + ".live.tsv"
    wildcard_constraints:
        layer=LAYER_NAME,
    conda:
        ENV
    threads: THREADS
    resources:
        **model_resources(),
    params:
        settings=params("batch_live"),
    script:
        "../scripts/run.py"


rule baseline_live:
    """The unedited model's greedy continuations and its metrics under the live protocol."""
    input:
        model=MODEL_MANIFEST,
        records=RECORDS,
    output:
        nll=f"{BASELINE}.live.nll.parquet",
        cases=f"{BASELINE}.live.cases.parquet",
    log:
        f"{RUN_DIR}/logs/baseline.live.log",
    benchmark:
        f"{RUN_DIR}/benchmarks/baseline.live.tsv"
    conda:
        ENV
    threads: THREADS
    resources:
        **model_resources(),
    params:
        settings=params("baseline_live"),
    script:
        "../scripts/run.py"
