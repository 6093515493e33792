rule data:
    """Select the CounterFact records every experiment uses."""
    output:
        RECORDS,
    params:
        data=DATA_PARAMS,
    conda:
        ENV
    log:
        f"{RESULTS}/records/logs/{SELECTION}.log",
    benchmark:
        f"{RESULTS}/records/benchmarks/{SELECTION}.tsv"
    resources:
        **LIGHT,
    script:
        "../scripts/select_records.py"
