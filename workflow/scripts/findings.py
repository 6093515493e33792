from editscale.workflow import report, stages

i, p = snakemake.input, snakemake.params
with stages.logged(snakemake.log[0], snakemake.config):
    report.write_findings({"sweep": list(i.sweep), "batch": list(i.batch), "retained": list(i.retained)}, i.model,
                          p.findings, snakemake.output.table, layer=p.layer, best_layer_path=(list(i.best) or [None])[0],
                          window=p.window)
