from editscale import report, stages

with stages.logged(snakemake.log[0], snakemake.threads):
    report.summarise(snakemake.wildcards.kind, list(snakemake.input), snakemake.output.table)
