from editscale import stages

with stages.logged(snakemake.log[0], snakemake.threads):
    stages.compute_value_chunk(
        snakemake.params.model, snakemake.params.values, snakemake.input.records, snakemake.input.templates,
        int(snakemake.wildcards.layer), int(snakemake.wildcards.chunk), snakemake.params.values["chunk"],
        snakemake.output[0],
    )
