from editscale.workflow import stages

p, i, w = snakemake.params, snakemake.input, snakemake.wildcards
with stages.logged(snakemake.log[0], snakemake.config) as run:
    stages.compute_values(model=p.model, value_settings=p.values, run=run, records_path=i.records,
                          templates_path=i.templates, layer=int(w.layer), start=int(w.start), end=int(w.end),
                          out_path=snakemake.output[0])
