SUMMARY_INPUTS = {
    **{kind: outputs_of(*source) for kind, source in SUMMARY_SOURCES.items()},
    "baseline": lambda w: BASELINE_CASES,
}


rule summary:
    """Mean, std and bootstrap CI per metric (Parquet, with CSV and Markdown copies); sequential
    runs start from the unedited model at 0 edits."""
    input:
        cases=lambda w: SUMMARY_INPUTS[w.kind](w),
        baseline=BASELINE_CASES,
    output:
        table=SUMMARY,
        csv=SUMMARY.replace(".parquet", ".csv"),
        md=SUMMARY.replace(".parquet", ".md"),
    log:
        f"{RUN_DIR}/logs/summary/{{kind}}.log",
    benchmark:
        f"{RUN_DIR}/benchmarks/summary/{{kind}}.tsv"
    wildcard_constraints:
        kind="|".join(SUMMARY_INPUTS),  # quality and health are collected, not summarised
    conda:
        ENV
    resources:
        **LIGHT,
    params:
        settings=params("summary"),
    script:
        "../scripts/run.py"


rule collect:
    """Tables stacked as they are: fluency and drift of the unedited model and at every retained
    checkpoint (quality), and every sequential batch's weight health and diagnostics (health).
    """
    input:
        tables=lambda w: collected(w.kind)(w),
    output:
        table=SUMMARY,
        csv=SUMMARY.replace(".parquet", ".csv"),
        md=SUMMARY.replace(".parquet", ".md"),
    log:
        f"{RUN_DIR}/logs/summary/{{kind}}.log",
    benchmark:
        f"{RUN_DIR}/benchmarks/summary/{{kind}}.tsv"
    wildcard_constraints:
        kind="|".join(COLLECTED_SOURCES),
    conda:
        ENV
    resources:
        **LIGHT,
    script:
        "../scripts/run.py"


rule findings:
    """The paper's claims as statistics with paired bootstrap CIs and a verdict each."""
    input:
        **{kind: outputs_of(*source) for kind, source in SUMMARY_SOURCES.items()},
        model=MODEL_MANIFEST,
        best=[BEST_LAYER] if SETTINGS.layer == "auto" else [],  # which runs are at the chosen layer
    output:
        table=FINDINGS,
        csv=report(
            FINDINGS.replace(".parquet", ".csv"),
            caption="../report/findings.rst",
            category="1. Findings",
        ),
        md=FINDINGS.replace(".parquet", ".md"),
    log:
        f"{RUN_DIR}/logs/findings.log",
    benchmark:
        f"{RUN_DIR}/benchmarks/findings.tsv"
    conda:
        ENV
    resources:
        **LIGHT,
    params:
        settings=params("findings"),
    script:
        "../scripts/run.py"
