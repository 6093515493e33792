# editscale: reproduce "Is Bigger Edit Batch Size Always Better?" (Yoon, Gupta, Anumanchipalli, 2024).
# Thin on purpose: configuration, validation, the stage files and the final targets.
from snakemake.utils import min_version, validate

min_version("8.0")


configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/templates.smk"
include: "workflow/rules/stats.smk"
include: "workflow/rules/values.smk"
include: "workflow/rules/sweep.smk"
include: "workflow/rules/batch.smk"
include: "workflow/rules/sequential.smk"
include: "workflow/rules/summary.smk"
include: "workflow/rules/plots.smk"


rule all:
    input:
        expand(SUMMARY, kind=["sweep", "batch", "immediate", "retained", "baseline", "quality"]),
        expand(PLOT, name=FIGURES),
    default_target: True

