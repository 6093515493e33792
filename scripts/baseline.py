from editscale import experiments, stages

with stages.logged(snakemake.log[0], snakemake.threads):
    experiments.baseline(snakemake.params.model, snakemake.params.evaluation, snakemake.input.records,
                         snakemake.output.nll, snakemake.output.cases, snakemake.output.quality)
