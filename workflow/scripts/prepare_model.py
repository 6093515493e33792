from editscale.workflow import stages

with stages.logged(snakemake.log[0], snakemake.config):
    stages.prepare_model(model=snakemake.params.model, manifest_path=snakemake.output[0])
