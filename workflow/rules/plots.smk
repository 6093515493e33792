rule plots:
    """The paper's figures from the summary tables alone: seconds, and never the model."""
    input:
        **{kind: SUMMARY.format(kind=kind) for kind in ("sweep", "batch", "immediate", "retained")},
        quality=SUMMARY.format(kind="quality"),
    output:
        sweep=report(PLOT.format(name="sweep"), caption="../report/sweep.rst", category="Figures"),
        batch=report(PLOT.format(name="batch"), caption="../report/batch.rst", category="Figures"),
        sequential=report(PLOT.format(name="sequential"), caption="../report/sequential.rst", category="Figures"),
        immediate_vs_retained=report(PLOT.format(name="immediate_vs_retained"),
                                     caption="../report/immediate_vs_retained.rst", category="Figures"),
        pdfs=[PLOT.format(name=name).replace(".png", ".pdf") for name in FIGURES],
    params:
        style=S.results(SETTINGS.plots),
    conda:
        ENV
    log:
        f"{RUN_DIR}/logs/plots.log",
    benchmark:
        f"{RUN_DIR}/benchmarks/plots.tsv"
    resources:
        **LIGHT,
    script:
        "../../scripts/plot.py"
