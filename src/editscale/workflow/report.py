"""Summary tables, findings and figures, from per-case Parquet alone (never the model), for every
experiment of the registry (`experiments.EXPERIMENTS`)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from editscale import artifacts
from editscale.evaluation import metrics
from editscale.settings import compared_window, layer_name, results
from editscale.workflow import experiments, figures, findings, text
from editscale.workflow.job import Job, Stage

log = logging.getLogger(__name__)
ACROSS = "teacher_forced − live"  # the rows and figures that compare the protocols (`Experiment.across_protocols`)


def summarise(job: Job) -> None:
    """Aggregate the per-case tables of one kind (`job.wildcards["kind"]`) by the columns its
    experiment declares, each protocol apart (its `protocol` column leads the summary); also write
    CSV and Markdown copies beside. A kind that starts from the unedited model (its entry's `starts`)
    gets those rows first, from the baseline's per-case table of the same protocol."""
    kind, paths, out = job.wildcards["kind"], job.files("cases"), job.output["table"]
    groups = experiments.summary_groups()[kind]
    entry = experiments.owner(kind)  # None: the baseline's, summarised plainly
    scored = entry is None or entry.live is not None  # its tables name their protocol
    if not paths:  # the experiment is not in this config
        write_table(pd.DataFrame(columns=[*["protocol"] * scored, *groups, *metrics.AGGREGATE_COLUMNS]), out)
        return
    tables = [artifacts.read_parquet(p) for p in paths]
    own = [column for column in groups if entry is None or column not in entry.derived.get(kind, ())]
    needed = ["protocol"] * scored + own
    for path, table in zip(paths, tables):
        missing = [column for column in needed if column not in table.columns]
        if missing:
            raise ValueError(f"{path}: summary kind {kind!r} groups by {needed}, but this per-case table has no "
                             f"{missing}; its experiment's stage must write them (or its entry must not group by "
                             f"them, or declare them `derived` by its summariser)")
    cases = pd.concat(tables, ignore_index=True)
    starts = entry is not None and kind in entry.starts
    baseline = pd.concat([artifacts.read_parquet(p) for p in job.files("baseline")], ignore_index=True) if starts \
        else None
    options = job.settings.findings
    parts = []
    for protocol in [p for p in metrics.PROTOCOLS if p in set(cases.protocol)] if scored else [None]:
        mine = cases[cases.protocol == protocol] if scored else cases
        if starts:
            mine = pd.concat([entry.starts[kind](mine, baseline[baseline.protocol == protocol]), mine],
                             ignore_index=True)
        summary = (entry.summarise(mine, groups, options) if entry is not None and entry.summarise
                   else metrics.aggregate(mine, by=groups, n_boot=options.n_boot, seed=options.seed))
        if scored:
            summary.insert(0, "protocol", protocol)
        parts.append(summary)
    write_table(pd.concat(parts, ignore_index=True), out)


def of_protocol(table: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """The rows a protocol scored; a table with no `protocol` column (fluency, weight health, the
    downstream check) is the same under every protocol, and ACROSS reads every protocol's rows."""
    if protocol == ACROSS or "protocol" not in table.columns:
        return table
    return table[table["protocol"] == protocol]


def viewed(tables: dict, protocol: str) -> dict:
    return {kind: of_protocol(table, protocol) for kind, table in tables.items()}


def collect(job: Job) -> None:
    """Tables of the same kind (quality, weight health) stacked as they are."""
    tables = [artifacts.read_parquet(p) for p in job.files("tables")]
    write_table(pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(), job.output["table"])


def write_findings(job: Job) -> None:
    """The findings table (findings.{parquet,csv,md}): every experiment's claims, from the per-case
    tables of each kind, under each protocol apart (`experiments.protocols_of`), then the claims that
    compare the protocols (ACROSS). Claims (a)–(e) read the runs at the chosen layer (`layer`, or the
    sweep's best); (f) compares them with the runs at the window (settings.Window), if any."""
    empty = pd.DataFrame(columns=["protocol", "case_id", "algorithm", "layer", "layers", "batch_size", "n_edits", "ES",
                                  "PS", "NS"])
    every = {kind: pd.concat([artifacts.read_parquet(p) for p in job.files(kind)], ignore_index=True)
             if job.files(kind) else empty for kind in experiments.summary_sources()}
    n_layers = artifacts.read_yaml(job.input["model"], {"n_layers": int})["n_layers"]
    main, spread = chosen_and_window(job)
    chosen = {kind: t[t["layers"].astype(str) == main] if experiments.at_chosen_layer(kind) and main != "auto" else t
              for kind, t in every.items()}
    options, protocols = job.settings.findings, job.settings.evaluation.protocols
    missing = missing_findings(job, main)
    parts = []
    for protocol in [*protocols, ACROSS] if len(protocols) > 1 else protocols:
        claims = {letter: claim for e in experiments.EXPERIMENTS.values() for letter, claim in e.claims.items()
                  if protocol in (experiments.protocols_of(e, protocols) or [ACROSS])}
        runs = findings.Runs(viewed(chosen, protocol), viewed(every, protocol), n_layers, main, spread, options,
                             missing)
        parts.append(findings.table(runs, claims, protocol=protocol))
    table = pd.concat(parts, ignore_index=True)
    for row in table.itertuples(index=False):
        log.info("%s (%s): %s = %.2f [%.2f, %.2f] -> %s", row.claim, row.protocol, row.statistic, row.value,
                 row.ci_low, row.ci_high, row.verdict)
    appendix = experiments.appendix(viewed(every, metrics.TEACHER_FORCED), options)
    write_table(table, job.output["table"], findings.markdown(table, appendix))


def plot_all(job: Job) -> None:
    """Every experiment's figures from the summary tables (`job.input`: kind -> Parquet); each
    shows the runs at the chosen layer (`layer`, or the sweep's best), the window figure compares
    them with finding (f)'s window. A figure whose experiment did not run says so."""
    palette = figures.style(results(job.settings.plots))
    every = {kind: artifacts.read_parquet(path) for kind, path in job.input.items() if kind != "best"}
    main, spread = chosen_and_window(job)
    tables = dict(every)
    for kind, table in every.items():  # the unedited model's rows have no layers
        if experiments.at_chosen_layer(kind) and main != "auto" and len(table) and "layers" in table:
            tables[kind] = table[(table["layers"].astype(str) == main) | table["layers"].isna()]
    protocols = job.settings.evaluation.protocols
    for entry in experiments.EXPERIMENTS.values():
        for protocol in experiments.protocols_of(entry, protocols) or [ACROSS]:
            canvas = figures.Canvas(viewed(tables, protocol), viewed(every, protocol), main, spread,
                                    palette(n_colors=10), palette, list(job.settings.plots.formats),
                                    missing_findings(job, main), protocol=protocol)
            for name, figure in entry.figures.items():
                out = job.output[name + ("" if protocol == ACROSS else experiments.suffix(protocol))]
                if figure.drawn(canvas):
                    figure.draw(canvas, out)
                else:
                    figures.nothing(name, out, canvas.formats, figure.why(canvas))


def missing_findings(job: Job, main: str) -> dict:
    """{claim letter: why} for the findings the settings ask for but cannot measure, logged."""
    w = job.settings.window
    missing = {}
    if (w.layers or w.size) and main != "auto" and compared_window(w, main) is None:
        missing["f"] = (f"window.size = {w.size} takes the layers ending at the chosen layer {main}, and there is "
                        f"no layer below it: no window to compare (name window.layers, or choose a later layer)")
    for letter, why in missing.items():
        log.warning("finding (%s) is not measured: %s", letter, why)
    return missing


def chosen_and_window(job: Job) -> tuple[str, str | None]:
    """The path names of the chosen layer (`layer`, or the sweep's best from the job's `best` input)
    and of finding (f)'s window (None without one)."""
    s = job.settings
    best = job.files("best") if "best" in job.input else []
    if s.layer != "auto":
        main = layer_name(s.layer)
    else:
        main = layer_name(experiments.read_layer(best[0])) if best else "auto"
    return main, compared_window(s.window, main) if main != "auto" else None


def write_table(table: pd.DataFrame, out_parquet, text: str | None = None) -> None:
    """The table as Parquet, with CSV and Markdown (`text`, or a plain rendering) beside it."""
    out = Path(out_parquet)
    artifacts.write_parquet(table, out)
    artifacts.write_text(table.to_csv(index=False), out.with_suffix(".csv"))
    artifacts.write_text(text or markdown(table), out.with_suffix(".md"))


def markdown(table: pd.DataFrame) -> str:
    return "\n".join(text.table(list(table.columns), table.itertuples(index=False))) + "\n"


_NOTHING = lambda s, w: {}  # noqa: E731: reads tables only; their settings are in their inputs' paths
STAGES = {
    "summary": Stage(summarise, lambda s, w: {"findings": results(s.findings)}),  # its inputs name the protocols
    "collect": Stage(collect, _NOTHING),
    "findings": Stage(write_findings, lambda s, w: {"findings": results(s.findings), "layer": _layer(s),
                                                    "window": results(s.window),
                                                    "protocols": list(s.evaluation.protocols)}),
    "plots": Stage(plot_all, lambda s, w: {"plots": results(s.plots), "layer": _layer(s),
                                           "window": results(s.window), "protocols": list(s.evaluation.protocols)}),
}


def _layer(s) -> str:
    return layer_name(s.layer) if s.layer != "auto" else "auto"
