from editscale.workflow import experiments, stages

p, i, o = snakemake.params, snakemake.input, snakemake.output
with stages.logged(snakemake.log[0], snakemake.config) as run:
    experiments.baseline(p.model, p.evaluation, run, i.records, o.nll, o.cases, o.quality)
