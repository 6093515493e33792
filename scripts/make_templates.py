from editscale import stages

with stages.logged(snakemake.log[0], snakemake.threads):
    stages.make_templates(snakemake.params.model, snakemake.params.templates, snakemake.output[0])
