rule sequential:
    """Batches of B applied one after another to the same model, checkpointed after every batch:
    a killed run continues from its last checkpoint. The first batch reuses the cached values."""
    input:
        model=MODEL_MANIFEST,
        records=RECORDS,
        templates=TEMPLATES,
        stats=STATS,
        values=lambda w: value_chunks(w.layer, min(int(w.size), N_SEQ)),  # the first batch's, on the unedited model
    output:
        immediate=f"{SEQUENTIAL}.immediate.parquet",
        retained=f"{SEQUENTIAL}.retained.parquet",
        quality=f"{SEQUENTIAL}.quality.parquet",
    params:
        model=config["model"],
        edit=config["edit"],
        values=config["values"],
        evaluation=config["evaluation"],
        n=N_SEQ,
        retained_every=config["sequential"]["retained_every"],
    conda:
        ENV
    log:
        f"{RUN_DIR}/logs/sequential/{{algorithm}}-layer{{layer}}-b{{size}}.log",
    benchmark:
        f"{RUN_DIR}/benchmarks/sequential/{{algorithm}}-layer{{layer}}-b{{size}}.tsv"
    threads: THREADS
    resources:
        mem_mb=8000,
        gpu=GPU,
    script:
        "../../scripts/sequential.py"
