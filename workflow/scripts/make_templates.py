from editscale.workflow import stages

p = snakemake.params
with stages.logged(snakemake.log[0], snakemake.config) as run:
    stages.make_templates(model=p.model, templates=p.templates, run=run, out_path=snakemake.output[0])
