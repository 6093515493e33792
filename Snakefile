# editscale: reproduce "Is Bigger Edit Batch Size Always Better?" (Yoon, Gupta, Anumanchipalli, 2024).
# Thin on purpose: configuration, validation, the stage files and the final targets.
from snakemake.utils import min_version, validate

min_version("8.0")

configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/data.smk"


rule all:
    input:
        MODEL_MANIFEST,
        RECORDS,
    default_target: True
