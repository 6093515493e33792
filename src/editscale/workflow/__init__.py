"""What the Snakemake rules run: stages (model, data, templates, C, values), the experiments,
findings and the report. Scripts under `scripts/` only pass arguments here."""
