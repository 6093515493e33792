"""The figures, from the summary tables alone (never the model), each metric with its 95% CI.

Each panel row shows the dataset's headline metrics (CounterFact: ES, PS, NS; zsRE: its token
accuracies) and Score; every percentage shares a fixed 0–100 axis, so a difference of half a point looks like one;
the unedited model is a dashed line in every panel (and the first point of every sequential
line, at 0 edits).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from editscale import artifacts
from editscale.data import DATASETS
from editscale.data.records import dataset_of

PERCENT = {"Score", *(m for d in DATASETS.values() for m in d.metrics)}  # on the fixed 0–100 axis
NAMES = {"Score": "Score", **{m: label for d in DATASETS.values() for m, label in d.labels.items()},
         "drift_perplexity": "drift perplexity", "fluency": "generation entropy",
         "delta_relative": "‖ΔW‖ / ‖W₀‖ (Frobenius)", "delta_spectral": "spectral norm of ΔW",
         "weight_condition": "condition number of W"}
HEALTH = ["delta_relative", "delta_spectral", "weight_condition"]


def _style(style: dict):
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    sns.set_theme(style=style.get("style", "whitegrid"), context=style.get("context", "paper"),
                  palette=style.get("palette", "colorblind"))
    return sns


def _grid(rows: int, cols: int, width: float = 2.7, height: float = 2.4):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, constrained_layout=True)
    return fig, axes


def _band(ax, frame: pd.DataFrame, x: str, label, color, ls: str = "-") -> None:
    frame = frame.sort_values(x)
    ax.plot(frame[x], frame["mean"], marker="o", ms=3, lw=1.4, ls=ls, color=color, label=str(label))
    if {"ci_low", "ci_high"} <= set(frame) and frame.ci_low.notna().any():
        ax.fill_between(frame[x], frame.ci_low, frame.ci_high, color=color, alpha=0.18, lw=0)


def _unedited(ax, value: float | None, label: str = "unedited") -> None:
    if value is not None and np.isfinite(value):
        ax.axhline(value, ls="--", lw=1, color="0.45", label=label, zorder=0)


def _headline(table: pd.DataFrame) -> list:
    """Score and the table's dataset's three headline metrics, the panels of every figure."""
    return ["Score", *DATASETS[dataset_of(table)].headline]


def _metric_axis(ax, metric: str) -> None:
    ax.set_title(NAMES.get(metric, metric))
    if metric in PERCENT:
        ax.set_ylim(0, 100)
    elif ax.get_yscale() == "linear":
        ax.ticklabel_format(axis="y", useOffset=False)


def _save(fig, out_png, formats, title: str, legend: str = "outside lower center") -> None:
    import matplotlib.pyplot as plt

    # Wrapped to the panels' width: a longer title runs off the canvas and under the legend.
    fig.suptitle(textwrap.fill(title, width=max(30, int(8 * fig.get_figwidth()))))
    handles = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    columns = min(len(handles), 4) if legend.endswith("center") and "lower" in legend else 1
    fig.legend(list(handles.values()), list(handles), loc=legend, frameon=False, ncols=max(columns, 1))
    out = Path(out_png)
    for fmt in formats:
        with artifacts.atomic_path(out.with_suffix(f".{fmt}")) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150)
    plt.close(fig)


def _baseline_of(baseline: pd.DataFrame, metric: str) -> float | None:
    rows = baseline[baseline.metric == metric]["mean"]
    return float(rows.iloc[0]) if len(rows) else None


def _note(table: pd.DataFrame) -> str:
    if "format" not in table or not len(table):
        return ""
    return f"({dataset_of(table)}, {table['format'].iloc[0]}-format records)"


def sweep(summary: pd.DataFrame, baseline: pd.DataFrame, colors, out, formats) -> None:
    headline = _headline(summary)
    fig, axes = _grid(1, len(headline))
    for ax, metric in zip(axes[0], headline):
        for color, (algorithm, part) in zip(colors, summary[summary.metric == metric].groupby("algorithm")):
            _band(ax, part, "layer", algorithm, color)
        _unedited(ax, _baseline_of(baseline, metric), "unedited (all records)")
        _metric_axis(ax, metric)
        ax.set_xlabel("layer")
    _save(fig, out, formats, f"Layer sweep: single edits at each layer, mean and 95% CI {_note(summary)}")


def batch(summary: pd.DataFrame, baseline: pd.DataFrame, colors, out, formats) -> None:
    headline = _headline(summary)
    fig, axes = _grid(1, len(headline))
    sizes = sorted(summary.batch_size.unique())
    for ax, metric in zip(axes[0], headline):
        for color, (algorithm, part) in zip(colors, summary[summary.metric == metric].groupby("algorithm")):
            _band(ax, part, "batch_size", algorithm, color)
        _unedited(ax, _baseline_of(baseline, metric))
        _metric_axis(ax, metric)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(b) for b in sizes], rotation=45)  # set level, the labels 1024 and 2048 touch
        ax.minorticks_off()
        ax.set_xlabel("batch size B")
    _save(fig, out, formats, f"Batch editing from the unedited model, mean and 95% CI {_note(summary)}")


def _one_batch(ax, point: pd.DataFrame, x: float, label: str, color) -> None:
    """One batch of all N edits: one point at N with its 95% CI, never a line from 0 to N."""
    if not len(point):
        return
    row = point.iloc[0]
    ax.errorbar([x], [row["mean"]], yerr=[[row["mean"] - row.ci_low], [row.ci_high - row["mean"]]], fmt="D", ms=5,
                capsize=3, color=color, label=label, zorder=3)


def _versus(ax, part: pd.DataFrame, x: str, label, color, ls="-") -> None:
    """Sequential − the one batch on the same cases, paired, with its 95% CI."""
    part = part.dropna(subset=["versus_one_batch"]).sort_values(x)
    if not len(part):
        return
    ax.plot(part[x], part.versus_one_batch, marker="o", ms=3, lw=1.4, ls=ls, color=color, label=str(label))
    ax.fill_between(part[x], part.versus_low, part.versus_high, color=color, alpha=0.15, lw=0)


def _zero(ax, metric: str) -> None:
    ax.axhline(0, lw=1, color="0.3", zorder=0)
    ax.set_title(f"{metric}: sequential − one batch", fontsize=8)


def _one_batch_of(table: pd.DataFrame, edits: str = "n_edits") -> int | None:
    """The N of a sequential grid whose largest B is one batch of all N edits, else None (`edits`:
    the column counting edits, `stretch` in the immediate summary)."""
    n = int(table[edits].max()) if edits in table and len(table) else None
    return n if n is not None and n in set(table.batch_size) and table.batch_size.nunique() > 1 else None


def sequential(retained: pd.DataFrame, quality: pd.DataFrame, baseline: pd.DataFrame, colors, out, formats) -> None:
    """Retained metrics of every edit so far against edits, one line per B from the unedited model at 0,
    the one batch of all N as one point at N; below, each retained point against the one batch on the
    same cases (the k cases edited so far), paired."""
    algorithms = sorted(retained.algorithm.unique())
    headline = _headline(retained)
    columns = [*headline, "drift_perplexity"]
    fig, axes = _grid(2 * len(algorithms), len(columns))
    sizes = sorted(retained.batch_size.unique())
    unedited_quality = quality[quality.n_edits == 0]
    runs = quality[quality.n_edits > 0]
    for i, algorithm in enumerate(algorithms):
        row, below = axes[2 * i], axes[2 * i + 1]
        mine = retained[retained.algorithm == algorithm]
        n = _one_batch_of(mine)
        for ax, metric in zip(row, columns):
            for color, size in zip(colors, sizes):
                if metric in headline:
                    part = mine[(mine.metric == metric) & (mine.batch_size == size)]
                else:
                    part = runs[(runs.algorithm == algorithm) & (runs.batch_size == size)]
                    part = pd.concat([unedited_quality, part]).assign(mean=lambda q: q[metric])[["n_edits", "mean"]]
                if size == n:
                    end = part[part.n_edits == n]
                    _one_batch(ax, end.assign(ci_low=end.get("ci_low", end["mean"]),
                                              ci_high=end.get("ci_high", end["mean"])), n, f"one batch of {n}", color)
                else:
                    _band(ax, part, "n_edits", f"B = {size}", color)
            if metric in headline:  # the runs' own start: the unedited model on the same records
                start = mine[(mine.metric == metric) & (mine.n_edits == 0)]["mean"]
                _unedited(ax, float(start.iloc[0]) if len(start) else _baseline_of(baseline, metric))
            elif len(unedited_quality):
                _unedited(ax, float(unedited_quality[metric].iloc[0]))
            _metric_axis(ax, metric)
            ax.set_xlabel("edits")
        for ax, metric in zip(below, columns):
            if metric not in headline or n is None or "versus_one_batch" not in mine:
                ax.axis("off")
                continue
            for color, size in zip(colors, sizes):
                _versus(ax, mine[(mine.metric == metric) & (mine.batch_size == size)], "n_edits", f"B = {size}", color)
            _zero(ax, metric)
            ax.set_xlabel("edits (the cases edited so far)")
        row[0].set_ylabel(algorithm)
        below[0].set_ylabel(f"{algorithm}: paired, same cases")
    _save(fig, out, formats, f"Sequential-batch editing, retained: every edit so far, mean and 95% CI "
                             f"{_note(retained)}")


def immediate_vs_retained(immediate: pd.DataFrame, retained: pd.DataFrame, colors, out, formats) -> None:
    """The two protocols side by side, one line per B: immediate (the paper's: each stretch of batches
    scored right after its own edits, at the mean edits in the model then; dashed) and retained (every
    edit so far; solid); the one batch of all N as one point at N. Below, each against the one batch
    on the same cases, paired."""
    algorithms = sorted(immediate.algorithm.unique())
    headline = _headline(immediate)
    fig, axes = _grid(2 * len(algorithms), len(headline))
    sizes = sorted(immediate.batch_size.unique())
    for i, algorithm in enumerate(algorithms):
        row, below = axes[2 * i], axes[2 * i + 1]
        now, kept = immediate[immediate.algorithm == algorithm], retained[retained.algorithm == algorithm]
        n = _one_batch_of(now, "stretch")
        for top, low, metric in zip(row, below, headline):
            for color, size in zip(colors, sizes):
                part = now[(now.metric == metric) & (now.batch_size == size)]
                if size == n:
                    _one_batch(top, part, n, f"one batch of {n}", color)
                    continue
                _band(top, part.assign(n_edits=part.load), "n_edits", f"B = {size}, immediate", color, "--")
                later = kept[(kept.metric == metric) & (kept.batch_size == size) & (kept.n_edits > 0)]
                _band(top, later, "n_edits", f"B = {size}, retained", color)
                if "versus_one_batch" in part:
                    _versus(low, part.assign(n_edits=part.load), "n_edits", f"B = {size}, immediate", color, "--")
                    _versus(low, later, "n_edits", f"B = {size}, retained", color)
            _metric_axis(top, metric)
            top.set_xlabel("edits in the model when scored")
            _zero(low, metric)
            low.set_xlabel("edits in the model when scored")
        row[0].set_ylabel(algorithm)
        below[0].set_ylabel(f"{algorithm}: paired, same cases")
    _save(fig, out, formats, f"Sequential runs under two protocols: immediate (the paper's, dashed) and retained "
                             f"(solid), mean and 95% CI {_note(immediate)}")


def weight_health(health: pd.DataFrame, retained: pd.DataFrame, colors, out, formats) -> None:
    """Retained NS (the dataset's specificity) beside how far W has moved, against edits: one row per
    B, a line per algorithm."""
    spec = DATASETS[dataset_of(retained)].specificity
    sizes = sorted(health.batch_size.unique())
    algorithms = sorted(health.algorithm.unique())
    fig, axes = _grid(len(sizes), 1 + len(HEALTH))
    for row, size in zip(axes, sizes):
        for color, algorithm in zip(colors, algorithms):
            ns = retained[(retained.metric == spec) & (retained.algorithm == algorithm) & (retained.batch_size == size)]
            _band(row[0], ns, "n_edits", algorithm, color)
            runs = health[(health.algorithm == algorithm) & (health.batch_size == size)]
            for ax, metric in zip(row[1:], HEALTH):
                _band(ax, runs.assign(mean=runs[metric])[["n_edits", "mean"]], "n_edits", algorithm, color)
        _metric_axis(row[0], spec)
        for ax, metric in zip(row[1:], HEALTH):
            _metric_axis(ax, metric)
        row[len(HEALTH)].set_yscale("log")
        for ax in row:
            ax.set_xlabel("edits")
        row[0].set_ylabel(f"B = {size}")
    _save(fig, out, formats, f"Weight health of sequential runs beside retained {spec} {_note(retained)}")


def _nothing(name: str, out, formats, why: str | None = None) -> None:
    fig, axes = _grid(1, 1)
    axes[0][0].axis("off")
    text = textwrap.fill(f"not measured: {why}", 40) if why else f"no {name} in this config"
    axes[0][0].text(0.5, 0.5, text, ha="center", va="center")
    _save(fig, out, formats, "")


def window(batch: pd.DataFrame, retained: pd.DataFrame, layer: str, spread: str, colors, out, formats) -> None:
    """Finding (f): one layer against a window, at the largest B and at the end of the longest
    sequential run, specificity and Score with their 95% CIs, a pair of points per algorithm."""
    final = retained[retained.n_edits == retained.n_edits.max()] if len(retained) else retained
    cases = []
    for experiment, table, pick in (("batch", batch, max), ("sequential", final, min)):
        if not len(table):
            continue
        table = table[table["layers"].astype(str).isin([layer, spread])]
        both = [b for b in table.batch_size.unique() if table[table.batch_size == b]["layers"].nunique() == 2]
        if both:
            cases.append((experiment, table[table.batch_size == pick(both)]))
    headline = _headline(batch if len(batch) else retained)
    metrics = [headline[-1], "Score"]
    fig, axes = _grid(1, len(metrics), width=3.6)
    for ax, metric in zip(axes[0], metrics):
        ticks = []
        for experiment, table in cases:
            for algorithm in sorted(table.algorithm.unique()):
                ticks.append(f"{algorithm}\n{experiment} B = {int(table.batch_size.iloc[0])}")
                for shift, color, name in ((-0.12, colors[0], layer), (0.12, colors[1], spread)):
                    row = table[(table.algorithm == algorithm) & (table.metric == metric)
                                & (table["layers"].astype(str) == name)]
                    ax.errorbar([len(ticks) - 1 + shift], row["mean"], yerr=[row["mean"] - row.ci_low,
                                row.ci_high - row["mean"]], fmt="o", ms=4, capsize=2, color=color,
                                label=f"layer {name}" if "-" not in name and "+" not in name else f"layers {name}")
        _metric_axis(ax, metric)
        ax.set_xticks(range(len(ticks)), ticks, fontsize=7)
        ax.set_xlim(-0.5, len(ticks) - 0.5)  # each pair centred on its tick, clear of the frame
    _save(fig, out, formats, f"One layer against a window of layers, mean and 95% CI {_note(batch)}")


def downstream(summary: pd.DataFrame, colors, out, formats) -> None:
    """(g): each task's weighted F1 with its 95% CI, against B after one batch (left) and against
    edits in each sequential run (right); the unedited model dashed, chance dotted."""
    f1 = summary[summary.metric == "f1"]
    tasks = list(dict.fromkeys(f1.task))
    fig, axes = _grid(len(tasks), 2)
    for row, task in zip(axes, tasks):
        mine = f1[f1.task == task]
        unedited = mine[mine.run == "unedited"]
        start = float(unedited["value"].iloc[0]) if len(unedited) else None
        batch_runs, seq_runs = mine[mine.run == "batch"], mine[mine.run == "sequential"]
        batch_lines = list(batch_runs.groupby("algorithm"))
        seq_lines = list(seq_runs.groupby(["algorithm", "batch_size"]))
        # One colour per line across both panels: a batch algorithm and a sequential run never share one.
        batch_colors, seq_colors = colors[: len(batch_lines)], colors[len(batch_lines):]
        for color, (algorithm, part) in zip(batch_colors, batch_lines):
            _band(row[0], part.rename(columns={"value": "mean"}), "batch_size", f"{algorithm}, one batch", color)
        for color, ((algorithm, size), part) in zip(seq_colors, seq_lines):
            if len(seq_lines) > 1 and size == seq_runs[seq_runs.algorithm == algorithm].n_edits.max():
                _one_batch(row[1], part.rename(columns={"value": "mean"}), size, f"{algorithm}, one batch of {size}",
                           color)  # the grid's one batch of every edit: a point at N, not a line from 0
                continue
            first = unedited.assign(n_edits=0) if len(unedited) else unedited
            line = pd.concat([first, part]).rename(columns={"value": "mean"})
            _band(row[1], line, "n_edits", f"{algorithm}, sequential B = {size}", color)
        # A task the unedited model does not do above chance cannot show a fall: said on its panels.
        informative = bool(unedited["informative"].iloc[0]) if len(unedited) and "informative" in unedited else True
        for ax, x in zip(row, ("batch size B (one batch)", "edits (sequential)")):
            _unedited(ax, start)
            ax.axhline(mine["chance"].iloc[0], ls=":", lw=1, color="0.3", label="chance", zorder=0)
            ax.set_ylim(0, 1)
            ax.set_title(f"{task}: weighted F1" + ("" if informative else "\nunedited not above chance: no verdict"),
                         color="black" if informative else "0.45", fontsize=None if informative else 8)
            if not informative:
                ax.set_facecolor("0.94")
            ax.set_xlabel(x)
        if len(batch_runs):
            sizes = sorted(batch_runs.batch_size.unique())
            row[0].set_xscale("log", base=2)
            row[0].set_xticks(sizes, [str(b) for b in sizes], rotation=45)
            row[0].minorticks_off()
    # A tall, two-panel figure: a legend at the top would run under the title.
    _save(fig, out, formats, "Downstream check: weighted F1, 95% CI", legend="outside right center")


@dataclass
class Canvas:
    """What every figure is drawn from: the summary tables of each kind at the chosen layer (`tables`)
    and in full (`every`, windows too), the chosen layer's and (f)'s window's path names, the colours
    and the output formats."""
    tables: dict
    every: dict
    layer: str
    window: str | None
    colors: list
    palette: Callable  # seaborn's color_palette
    formats: list
    missing: dict = field(default_factory=dict)  # claim letter -> why the config cannot measure it


@dataclass(frozen=True)
class Figure:
    """A figure an experiment declares: `draw(canvas, out)`, and `drawn(canvas)`, whether the config ran
    what it shows (else it says so); its caption is workflow/report/<name>.rst."""
    draw: Callable
    drawn: Callable
    why: Callable = lambda canvas: None  # noqa: E731: what to say when it is not drawn (None: not in this config)


def style(settings: dict):
    """Seaborn with the config's plot style; its colour palette."""
    return _style(settings).color_palette


def nothing(name: str, out, formats, why: str | None = None) -> None:
    _nothing(name.replace("_", " ") + " experiment", out, formats, why)


SWEEP = Figure(lambda c, out: sweep(c.tables["sweep"], c.tables["baseline"], c.colors, out, c.formats),
               lambda c: len(c.tables["sweep"]))
BATCH = Figure(lambda c, out: batch(c.tables["batch"], c.tables["baseline"], c.colors, out, c.formats),
               lambda c: len(c.tables["batch"]))
SEQUENTIAL = Figure(lambda c, out: sequential(c.tables["retained"], c.tables["quality"], c.tables["baseline"],
                                              c.palette("viridis", max(2, c.tables["retained"].batch_size.nunique())),
                                              out, c.formats),
                    lambda c: len(c.tables["retained"]))
IMMEDIATE_VS_RETAINED = Figure(lambda c, out: immediate_vs_retained(c.tables["immediate"], c.tables["retained"],
                                                                    c.colors, out, c.formats),
                               lambda c: len(c.tables["immediate"]))
WEIGHT_HEALTH = Figure(lambda c, out: weight_health(c.tables["health"], c.tables["retained"], c.colors, out,
                                                    c.formats),
                       lambda c: len(c.tables["health"]))
DOWNSTREAM = Figure(lambda c, out: downstream(c.tables["downstream"], c.colors, out, c.formats),
                    lambda c: len(c.tables["downstream"]))
WINDOW = Figure(lambda c, out: window(c.every["batch"], c.every["retained"], c.layer, c.window, c.colors, out,
                                      c.formats),
                lambda c: c.window is not None and (len(c.every["batch"]) or len(c.every["retained"])),
                lambda c: c.missing.get("f"))
