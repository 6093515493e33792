rule model:
    """Make the model loadable offline (the embedded default is converted from its GGUF once)."""
    output:
        manifest=MODEL_MANIFEST,
    log:
        f"{MODEL_DIR}/logs/model.log",
    benchmark:
        f"{MODEL_DIR}/benchmarks/model.tsv"
    conda:
        ENV
    resources:
        **model_resources(gpus=0),  # conversion runs on the CPU
    params:
        settings=params("model"),
    script:
        "../scripts/run.py"
