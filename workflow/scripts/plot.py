from editscale.workflow import figures, stages

i, p = snakemake.input, snakemake.params
with stages.logged(snakemake.log[0], snakemake.config):
    figures.plot_all({kind: path for kind, path in i.items() if kind != "best"}, p.style,
                     {name: snakemake.output[name] for name in figures.FIGURES}, layer=p.layer,
                     best_layer_path=(list(i.best) or [None])[0], window_settings=p.window)
