from editscale.workflow import report, stages

with stages.logged(snakemake.log[0], snakemake.config):
    report.collect(list(snakemake.input), snakemake.output.table)
