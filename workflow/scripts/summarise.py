from editscale.workflow import report, stages

i = snakemake.input
with stages.logged(snakemake.log[0], snakemake.config):
    report.summarise(snakemake.wildcards.kind, list(i.cases), snakemake.output.table, baseline_path=i.baseline,
                     n_boot=snakemake.params.n_boot, seed=snakemake.params.seed)
