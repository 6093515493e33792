rule stats:
    """C = E[k kᵀ] of the edited projection's input at one layer (stops after that layer)."""
    input:
        MODEL_MANIFEST,
    output:
        STATS,
    params:
        model=config["model"],
        stats=config["stats"],
    conda:
        ENV
    log:
        f"{MODEL_DIR}/logs/stats/{STATS_ID}-layer{{layer}}.log",
    benchmark:
        f"{MODEL_DIR}/benchmarks/stats/{STATS_ID}-layer{{layer}}.tsv"
    threads: THREADS
    resources:
        mem_mb=8000,
        gpu=GPU,
    script:
        "../../scripts/compute_stats.py"
