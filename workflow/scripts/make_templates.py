from editscale.workflow import stages

p = snakemake.params
with stages.logged(snakemake.log[0], snakemake.config) as run:
    stages.make_templates(p.model, p.templates, run, snakemake.output[0])
