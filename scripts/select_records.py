from editscale import stages

with stages.logged(snakemake.log[0], snakemake.threads):
    stages.select_records(snakemake.params.data, snakemake.output[0])
