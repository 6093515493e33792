from editscale.workflow import report, stages

i = snakemake.input
with stages.logged(snakemake.log[0], snakemake.config):
    report.write_findings({"sweep": list(i.sweep), "batch": list(i.batch), "retained": list(i.retained)}, i.model,
                          snakemake.params.findings, snakemake.output.table)
