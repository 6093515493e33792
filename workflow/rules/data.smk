rule data:
    """Select the records every experiment uses, from the config's dataset."""
    input:
        model=MODEL_MANIFEST,  # the tokenizer and context length, to refuse prompts that do not fit
    output:
        records=RECORDS,
    log:
        f"{RESULTS}/records/logs/{SELECTION}.log",
    benchmark:
        f"{RESULTS}/records/benchmarks/{SELECTION}.tsv"
    conda:
        ENV
    resources:
        **LIGHT,
    params:
        settings=params("data"),
    script:
        "../scripts/run.py"
