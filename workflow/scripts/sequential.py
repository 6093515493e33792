from editscale.workflow import experiments, stages

p, i, o, w = snakemake.params, snakemake.input, snakemake.output, snakemake.wildcards
with stages.logged(snakemake.log[0], snakemake.config) as run:
    experiments.sequential(p.model, p.edit, p.values, p.evaluation, run, i.records, i.templates, i.stats,
                           list(i.values), w.algorithm, int(w.layer), int(w.size), p.n, p.retained_every_edits,
                           o.immediate, o.retained, o.quality, o.batches, o.edits)
