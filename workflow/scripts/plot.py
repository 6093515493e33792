from editscale.workflow import figures, stages

with stages.logged(snakemake.log[0], snakemake.config):
    figures.plot_all(dict(snakemake.input.items()), snakemake.params.style,
                     {name: snakemake.output[name] for name in figures.FIGURES})
