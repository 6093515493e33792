SUMMARY_INPUTS = {
    "sweep": sweep_cases,
    "batch": batch_cases,
    "immediate": sequential_outputs("immediate"),
    "retained": sequential_outputs("retained"),
    "baseline": lambda w: [f"{BASELINE}.cases.parquet"],
}


rule summary:
    """Mean, std and bootstrap CI per metric (Parquet, with CSV and Markdown copies)."""
    input:
        lambda w: SUMMARY_INPUTS[w.kind](w),
    output:
        table=SUMMARY,
        csv=SUMMARY.replace(".parquet", ".csv"),
        md=SUMMARY.replace(".parquet", ".md"),
    wildcard_constraints:
        kind="|".join(SUMMARY_INPUTS),
    conda:
        ENV
    log:
        f"{RUN_DIR}/logs/summary/{{kind}}.log",
    benchmark:
        f"{RUN_DIR}/benchmarks/summary/{{kind}}.tsv"
    resources:
        **LIGHT,
    script:
        "../../scripts/summarise.py"


rule quality:
    """Fluency and drift perplexity of the unedited model and at every retained checkpoint."""
    input:
        lambda w: [f"{BASELINE}.quality.parquet", *sequential_outputs("quality")(w)],
    output:
        table=SUMMARY.format(kind="quality"),
        csv=SUMMARY.format(kind="quality").replace(".parquet", ".csv"),
        md=SUMMARY.format(kind="quality").replace(".parquet", ".md"),
    conda:
        ENV
    log:
        f"{RUN_DIR}/logs/summary/quality.log",
    benchmark:
        f"{RUN_DIR}/benchmarks/summary/quality.tsv"
    resources:
        **LIGHT,
    script:
        "../../scripts/collect_quality.py"
