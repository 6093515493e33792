from editscale import report, stages

with stages.logged(snakemake.log[0], snakemake.config):
    report.summarise(snakemake.wildcards.kind, list(snakemake.input), snakemake.output.table)
