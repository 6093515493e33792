from editscale import report, stages

with stages.logged(snakemake.log[0], snakemake.config):
    report.collect_quality(list(snakemake.input), snakemake.output.table)
