from editscale.workflow import stages

with stages.logged(snakemake.log[0], snakemake.config):
    stages.select_records(data_settings=snakemake.params.data, model_manifest=snakemake.input.model,
                          templates=snakemake.params.templates, out_path=snakemake.output[0])
