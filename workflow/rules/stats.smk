rule stats:
    """C = E[k kᵀ] of the edited projection's input at every layer a run can edit, in one pass
    that stops after the deepest of them."""
    input:
        MODEL_MANIFEST,
    output:
        expand(STATS, layer=STATS_LAYERS),
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
        model=MODEL_PARAMS,
        stats=S.results(SETTINGS.stats),
        layers=STATS_LAYERS,
    script:
        "../scripts/compute_stats.py"
