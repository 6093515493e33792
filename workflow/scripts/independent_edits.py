from editscale import settings
from editscale.workflow import experiments, stages

p, i, o, w = snakemake.params, snakemake.input, snakemake.output, snakemake.wildcards
with stages.logged(snakemake.log[0], snakemake.config) as run:
    experiments.independent(model=p.model, edit=p.edit, run=run, records_path=i.records, value_paths=list(i.values),
                            stats_paths=list(i.stats), templates_path=i.templates, baseline_nll=i.baseline,
                            algorithm=w.algorithm, layers=settings.window(w.layer),
                            batch_size=int(w.get("size", 1)), n=p.n, out_nll=o.nll, out_cases=o.cases)
