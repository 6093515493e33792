from editscale.workflow import experiments, stages

p, i, o, w = snakemake.params, snakemake.input, snakemake.output, snakemake.wildcards
with stages.logged(snakemake.log[0], snakemake.config) as run:
    experiments.independent(p.model, p.edit, run, i.records, list(i.values), i.stats, w.algorithm, int(w.layer),
                            int(w.get("size", 1)), p.n, o.nll, o.cases)
