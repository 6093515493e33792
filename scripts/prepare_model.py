from editscale import stages

with stages.logged(snakemake.log[0], snakemake.threads):
    stages.prepare_model(snakemake.params.model, snakemake.output[0])
