SUMMARY_INPUTS = {
    "sweep": sweep_cases,
    "batch": batch_cases,
    "immediate": sequential_outputs("immediate"),
    "retained": sequential_outputs("retained"),
    "baseline": lambda w: [f"{BASELINE}.cases.parquet"],
}


rule summary:
    """Mean, std and bootstrap CI per metric (Parquet, with CSV and Markdown copies); sequential
    runs start from the unedited model at 0 edits."""
    input:
        cases=lambda w: SUMMARY_INPUTS[w.kind](w),
        baseline=f"{BASELINE}.cases.parquet",
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
        n_boot=SETTINGS.findings.n_boot,
        seed=SETTINGS.findings.seed,
    script:
        "../scripts/summarise.py"


COLLECTED = {
    "quality": lambda w: [
        f"{BASELINE}.quality.parquet",
        *sequential_outputs("quality")(w),
    ],
    "health": sequential_outputs("batches"),
}


rule collect:
    """Tables stacked as they are: fluency and drift of the unedited model and at every retained
    checkpoint (quality), and every sequential batch's weight health and diagnostics (health).
    """
    input:
        lambda w: COLLECTED[w.kind](w),
    output:
        table=SUMMARY,
        csv=SUMMARY.replace(".parquet", ".csv"),
        md=SUMMARY.replace(".parquet", ".md"),
    log:
        f"{RUN_DIR}/logs/summary/{{kind}}.log",
    benchmark:
        f"{RUN_DIR}/benchmarks/summary/{{kind}}.tsv"
    wildcard_constraints:
        kind="|".join(COLLECTED),
    conda:
        ENV
    resources:
        **LIGHT,
    script:
        "../scripts/collect.py"


rule findings:
    """The paper's claims as statistics with paired bootstrap CIs and a verdict each."""
    input:
        sweep=sweep_cases,
        batch=batch_cases,
        retained=sequential_outputs("retained"),
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
        findings=S.results(SETTINGS.findings),
        layer=S.layer_name(SETTINGS.layer) if SETTINGS.layer != "auto" else "auto",
        window=S.results(SETTINGS.window),
    script:
        "../scripts/findings.py"
