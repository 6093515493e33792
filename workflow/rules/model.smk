rule model:
    """Make the model loadable offline (the embedded default is converted from its GGUF once)."""
    output:
        MODEL_MANIFEST,
    params:
        model=MODEL_PARAMS,
    conda:
        ENV
    log:
        f"{MODEL_DIR}/logs/model.log",
    benchmark:
        f"{MODEL_DIR}/benchmarks/model.tsv"
    resources:
        **model_resources(gpus=0),  # conversion runs on the CPU
    script:
        "../scripts/prepare_model.py"
