"""Summary tables and findings, from per-case Parquet alone (never the model). Figures: `figures`."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import yaml

from editscale import artifacts
from editscale.evaluation import metrics
from editscale.settings import Findings
from editscale.workflow import findings

log = logging.getLogger(__name__)

GROUPS = {
    "sweep": ["algorithm", "layer", "layers"],  # layer: where v* is (a window's last); layers: its name
    "batch": ["algorithm", "layer", "layers", "batch_size"],
    "immediate": ["algorithm", "layer", "layers", "batch_size"],
    "retained": ["algorithm", "layer", "layers", "batch_size", "n_edits"],
    "baseline": [],
}


def summarise(kind: str, case_paths: list, out_parquet, baseline_path=None, *, n_boot: int, seed: int) -> None:
    """Aggregate per-case tables of one experiment; also write CSV and Markdown copies beside.

    For sequential runs (`retained`), the unedited model on each run's records is the run's first
    point, at 0 edits (from the baseline's per-case table)."""
    if not case_paths:  # the experiment is not in this config
        write_table(pd.DataFrame(columns=[*GROUPS[kind], *metrics.AGGREGATE_COLUMNS]), out_parquet)
        return
    cases = pd.concat([artifacts.read_parquet(p) for p in case_paths], ignore_index=True)
    if kind == "retained" and baseline_path is not None:
        cases = pd.concat([_unedited_start(cases, artifacts.read_parquet(baseline_path)), cases], ignore_index=True)
    table = metrics.aggregate(cases, by=GROUPS[kind], n_boot=n_boot, seed=seed)
    write_table(table, out_parquet)


def _unedited_start(retained: pd.DataFrame, baseline: pd.DataFrame) -> pd.DataFrame:
    runs = retained.groupby(["algorithm", "layer", "layers", "batch_size"])
    parts = []
    for (algorithm, layer, layers, size), run in runs:
        final = run[run.n_edits == run.n_edits.max()]
        start = baseline[baseline.case_id.isin(final.case_id)]
        parts.append(start.assign(algorithm=algorithm, layer=layer, layers=layers, batch_size=size, batch=-1,
                                  n_edits=0))
    return pd.concat(parts, ignore_index=True)[retained.columns.intersection(parts[0].columns)]


def collect(paths_: list, out_parquet) -> None:
    """Tables of the same kind (quality, weight health) stacked as they are."""
    tables = [artifacts.read_parquet(p) for p in paths_]
    write_table(pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(), out_parquet)


def write_findings(case_paths: dict, manifest_path, options: dict, out_parquet, *, layer="auto", best_layer_path=None,
                   window: dict | None = None) -> None:
    """The findings table (findings.{parquet,csv,md}) from the sweep, batch and retained per-case tables.

    Claims (b)–(e) read the runs at the chosen layer (`layer`, or the sweep's best from
    `best_layer_path`); (f) compares them with the runs at the `window` (settings.Window), if any."""
    tables = {kind: pd.concat([artifacts.read_parquet(p) for p in paths], ignore_index=True) if paths else
              pd.DataFrame(columns=["case_id", "algorithm", "layer", "layers", "batch_size", "n_edits", "ES", "PS",
                                    "NS"])
              for kind, paths in case_paths.items()}
    with open(manifest_path) as f:
        n_layers = int(yaml.safe_load(f)["n_layers"])
    settings = Findings(**options)
    main, spread = chosen_and_window(layer, best_layer_path, window)
    at_main = {kind: t if kind == "sweep" or main == "auto" else t[t["layers"].astype(str) == main]
               for kind, t in tables.items()}
    table = findings.findings(at_main["sweep"], at_main["batch"], at_main["retained"], n_layers, settings)
    if spread is not None:
        table = pd.concat([table, pd.DataFrame(findings.window_vs_layer(tables["batch"], tables["retained"], main,
                                                                        spread, settings), columns=findings.COLUMNS)],
                          ignore_index=True)
    for row in table.itertuples(index=False):
        log.info("%s: %s = %.2f [%.2f, %.2f] -> %s", row.claim, row.statistic, row.value, row.ci_low, row.ci_high,
                 row.verdict)
    layers = findings.layer_scores(tables["sweep"], settings) if len(tables["sweep"]) else None
    write_table(table, out_parquet, findings.markdown(table, layers))


def chosen_and_window(layer, best_layer_path, window: dict | None) -> tuple[str, str | None]:
    """The path names of the chosen layer (`layer`, or the sweep's best from `best_layer_path`) and of
    finding (f)'s window (None without one)."""
    from editscale.settings import Window, compared_window, layer_name
    from editscale.workflow.experiments import read_layer

    main = layer_name(read_layer(best_layer_path)) if layer == "auto" and best_layer_path else str(layer)
    settings = Window(**{k: tuple(v) if isinstance(v, list) else v for k, v in (window or {}).items()})
    return main, compared_window(settings, main) if main != "auto" else None


def write_table(table: pd.DataFrame, out_parquet, text: str | None = None) -> None:
    """The table as Parquet, with CSV and Markdown (`text`, or a plain rendering) beside it."""
    out = Path(out_parquet)
    artifacts.write_parquet(table, out)
    artifacts.write_text(table.to_csv(index=False), out.with_suffix(".csv"))
    artifacts.write_text(text or markdown(table), out.with_suffix(".md"))


def markdown(table: pd.DataFrame) -> str:
    def cell(v):
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"
