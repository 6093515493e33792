rule data:
    """Select the CounterFact records every experiment uses."""
    output:
        RECORDS,
    params:
        data=config["data"],
    conda:
        ENV
    log:
        f"{RESULTS}/records/logs/{SELECTION}.log",
    benchmark:
        f"{RESULTS}/records/benchmarks/{SELECTION}.tsv"
    resources:
        mem_mb=2000,
    script:
        "../../scripts/select_records.py"
