from editscale.workflow import experiments, stages

p, i, o = snakemake.params, snakemake.input, snakemake.output
with stages.logged(snakemake.log[0], snakemake.config) as run:
    experiments.baseline(model=p.model, evaluation=p.evaluation, run=run, records_path=i.records, out_nll=o.nll,
                         out_cases=o.cases, out_quality=o.quality)
