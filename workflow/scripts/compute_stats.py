from editscale.workflow import stages

p = snakemake.params
with stages.logged(snakemake.log[0], snakemake.config) as run:
    stages.compute_stats(model=p.model, stats_settings=p.stats, run=run, outputs=dict(zip(p.layers, snakemake.output)))
