from editscale.workflow import stages

with stages.logged(snakemake.log[0], snakemake.config):
    stages.select_records(snakemake.params.data, snakemake.output[0])
