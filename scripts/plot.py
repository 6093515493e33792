from editscale import report, stages

i, o = snakemake.input, snakemake.output
with stages.logged(snakemake.log[0], snakemake.config):
    report.plot_all(
        {kind: i[kind] for kind in ("sweep", "batch", "immediate", "retained")}, i.quality, snakemake.params.style,
        {name: o[name] for name in ("sweep", "batch", "sequential", "immediate_vs_retained")},
    )
