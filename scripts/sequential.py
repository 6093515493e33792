from editscale import experiments, stages

w, p, out = snakemake.wildcards, snakemake.params, snakemake.output
with stages.logged(snakemake.log[0], snakemake.threads):
    experiments.sequential(
        p.model, p.edit, p.values, p.evaluation, snakemake.input.records, snakemake.input.templates,
        snakemake.input.stats, list(snakemake.input.values), w.algorithm, int(w.layer), int(w.size), p.n, p.retained_every,
        out.immediate, out.retained, out.quality,
    )
