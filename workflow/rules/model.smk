rule model:
    """Make the model loadable offline (the embedded default is converted from its GGUF once)."""
    output:
        MODEL_MANIFEST,
    params:
        model=config["model"],
    conda:
        ENV
    log:
        f"{MODEL_DIR}/logs/model.log",
    benchmark:
        f"{MODEL_DIR}/benchmarks/model.tsv"
    resources:
        mem_mb=4000,
    script:
        "../../scripts/prepare_model.py"
