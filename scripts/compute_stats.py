from editscale import stages

with stages.logged(snakemake.log[0], snakemake.threads):
    stages.compute_stats(snakemake.params.model, snakemake.params.stats, int(snakemake.wildcards.layer),
                         snakemake.output[0])
