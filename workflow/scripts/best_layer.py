from editscale.workflow import experiments, stages

with stages.logged(snakemake.log[0], snakemake.config):
    experiments.best_layer(list(snakemake.input), snakemake.output[0])
