from editscale.workflow import stages

p = snakemake.params
with stages.logged(snakemake.log[0], snakemake.config) as run:
    stages.compute_stats(p.model, p.stats, run, dict(zip(p.layers, snakemake.output)))
