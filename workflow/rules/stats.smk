rule stats:
    """C = E[k kᵀ] of the edited projection's input at every layer a run can edit, in one pass
    that stops after the deepest of them."""
    input:
        model=MODEL_MANIFEST,
    output:
        **{f"layer{layer}": STATS.format(layer=layer) for layer in STATS_LAYERS},
    log:
        f"{MODEL_DIR}/logs/stats/{STATS_ID}.log",
    benchmark:
        f"{MODEL_DIR}/benchmarks/stats/{STATS_ID}.tsv"
    conda:
        ENV
    threads: THREADS
    resources:
        **model_resources(),
    params:
        settings=params("stats"),
    script:
        "../scripts/run.py"
