from editscale import experiments, stages

w, p = snakemake.wildcards, snakemake.params
with stages.logged(snakemake.log[0], snakemake.threads):
    experiments.independent(
        p.model, p.edit, p.values, p.evaluation, snakemake.input.records, list(snakemake.input.values),
        snakemake.input.stats, w.algorithm, int(w.layer), int(w.get("size", 1)), p.n,
        snakemake.output.nll, snakemake.output.cases,
    )
