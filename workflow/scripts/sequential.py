from editscale import settings
from editscale.workflow import experiments, stages

p, i, o, w = snakemake.params, snakemake.input, snakemake.output, snakemake.wildcards
with stages.logged(snakemake.log[0], snakemake.config) as run:
    experiments.sequential(model=p.model, edit=p.edit, values=p.values, evaluation=p.evaluation, run=run,
                           records_path=i.records, templates_path=i.templates, stats_paths=list(i.stats),
                           baseline_nll=i.baseline,
                           value_paths=list(i.values), algorithm=w.algorithm, layers=settings.window(w.layer),
                           batch_size=int(w.size), n=p.n, retained_every_edits=p.retained_every_edits,
                           out_immediate=o.immediate, out_retained=o.retained, out_quality=o.quality,
                           out_batches=o.batches, out_edits=o.edits)
