rule data:
    """Select the CounterFact records every experiment uses."""
    output:
        RECORDS,
    log:
        f"{RESULTS}/records/logs/{SELECTION}.log",
    benchmark:
        f"{RESULTS}/records/benchmarks/{SELECTION}.tsv"
    conda:
        ENV
    resources:
        **LIGHT,
    params:
        data=DATA_PARAMS,
    script:
        "../scripts/select_records.py"
