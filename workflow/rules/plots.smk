rule plots:
    """The figures from the summary tables alone: seconds, and never the model."""
    input:
        **{kind: SUMMARY.format(kind=kind) for kind in SUMMARY_KINDS},
        best=[BEST_LAYER] if SETTINGS.layer == "auto" else [],  # which runs are at the chosen layer
    output:
        **{
            name: report(
                PLOT.format(name=name),
                caption=f"../report/{figure}.rst",
                category="2. Figures",
            )
            for name, figure in FIGURES.items()
        },
        other_formats=[
            PLOT.format(name=name).replace(".png", f".{fmt}")
            for name in FIGURES
            for fmt in SETTINGS.plots.formats
            if fmt != "png"
        ],
    log:
        f"{RUN_DIR}/logs/plots.log",
    benchmark:
        f"{RUN_DIR}/benchmarks/plots.tsv"
    conda:
        ENV
    resources:
        **LIGHT,
    params:
        settings=params("plots"),
    script:
        "../scripts/run.py"
