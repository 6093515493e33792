from editscale.workflow import stages

p, i, w = snakemake.params, snakemake.input, snakemake.wildcards
with stages.logged(snakemake.log[0], snakemake.config) as run:
    stages.compute_values(p.model, p.values, run, i.records, i.templates, int(w.layer), int(w.start), int(w.end),
                          snakemake.output[0])
