"""What the Snakemake rules run: stages (model, data, templates, C, values), the experiments,
findings and the report. Scripts under `workflow/scripts/` only pass arguments here."""
