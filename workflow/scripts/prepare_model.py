from editscale.workflow import stages

with stages.logged(snakemake.log[0], snakemake.config):
    stages.prepare_model(snakemake.params.model, snakemake.output[0])
