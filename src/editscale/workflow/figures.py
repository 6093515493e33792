"""What every figure shares: the plotting toolkit (a panel grid, a line with its CI band, the
unedited model's line, one batch as a point, a paired difference against the one batch, the
metric's axis, saving) and the `Figure` and `Canvas` an experiment's figures are declared with and
drawn from. Each experiment draws its own figures in its module (workflow/experiments/).

The figures come from the summary tables alone (never the model), each metric with its 95% CI.
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


def _seaborn(style: dict):
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    sns.set_theme(style=style.get("style", "whitegrid"), context=style.get("context", "paper"),
                  palette=style.get("palette", "colorblind"))
    return sns


def grid(rows: int, cols: int, width: float = 2.7, height: float = 2.4):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, constrained_layout=True)
    return fig, axes


def band(ax, frame: pd.DataFrame, x: str, label, color, ls: str = "-") -> None:
    frame = frame.sort_values(x)
    ax.plot(frame[x], frame["mean"], marker="o", ms=3, lw=1.4, ls=ls, color=color, label=str(label))
    if {"ci_low", "ci_high"} <= set(frame) and frame.ci_low.notna().any():
        ax.fill_between(frame[x], frame.ci_low, frame.ci_high, color=color, alpha=0.18, lw=0)


def unedited(ax, value: float | None, label: str = "unedited") -> None:
    if value is not None and np.isfinite(value):
        ax.axhline(value, ls="--", lw=1, color="0.45", label=label, zorder=0)


def headline(table: pd.DataFrame) -> list:
    """Score and the table's dataset's three headline metrics, the panels of every figure."""
    return ["Score", *DATASETS[dataset_of(table)].headline]


def metric_axis(ax, metric: str) -> None:
    ax.set_title(NAMES.get(metric, metric))
    if metric in PERCENT:
        ax.set_ylim(0, 100)
    elif ax.get_yscale() == "linear":
        ax.ticklabel_format(axis="y", useOffset=False)


def save(fig, out_png, formats, title: str, legend: str = "outside lower center") -> None:
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
        # The first save laid the panels out; the other formats keep that layout instead of solving
        # it again (constrained layout was half of the plots job's time).
        fig.set_layout_engine("none")
    plt.close(fig)


def baseline_of(baseline: pd.DataFrame, metric: str) -> float | None:
    rows = baseline[baseline.metric == metric]["mean"]
    return float(rows.iloc[0]) if len(rows) else None


PROTOCOL_NAMES = {"teacher_forced": "teacher-forced", "live": "live decoding"}


def note(table: pd.DataFrame) -> str:
    """What a figure's numbers are: the dataset, the record format and the protocol that scored them."""
    if "format" not in table or not len(table):
        return ""
    scored = sorted(set(table["protocol"].dropna())) if "protocol" in table else []
    protocol = f", {' and '.join(PROTOCOL_NAMES.get(p, p) for p in scored)}" if scored else ""
    return f"({dataset_of(table)}, {table['format'].iloc[0]}-format records{protocol})"


def one_batch(ax, point: pd.DataFrame, x: float, label: str, color) -> None:
    """One batch of all N edits: one point at N with its 95% CI, never a line from 0 to N."""
    if not len(point):
        return
    row = point.iloc[0]
    ax.errorbar([x], [row["mean"]], yerr=[[row["mean"] - row.ci_low], [row.ci_high - row["mean"]]], fmt="D", ms=5,
                capsize=3, color=color, label=label, zorder=3)


def versus(ax, part: pd.DataFrame, x: str, label, color, ls="-") -> None:
    """Sequential − the one batch on the same cases, paired, with its 95% CI."""
    part = part.dropna(subset=["versus_one_batch"]).sort_values(x)
    if not len(part):
        return
    ax.plot(part[x], part.versus_one_batch, marker="o", ms=3, lw=1.4, ls=ls, color=color, label=str(label))
    ax.fill_between(part[x], part.versus_low, part.versus_high, color=color, alpha=0.15, lw=0)


def zero(ax, metric: str) -> None:
    ax.axhline(0, lw=1, color="0.3", zorder=0)
    ax.set_title(f"{metric}: sequential − one batch", fontsize=8)


def one_batch_of(table: pd.DataFrame, edits: str = "n_edits") -> int | None:
    """The N of a sequential grid whose largest B is one batch of all N edits, else None (`edits`:
    the column counting edits, `stretch` in the immediate summary)."""
    n = int(table[edits].max()) if edits in table and len(table) else None
    return n if n is not None and n in set(table.batch_size) and table.batch_size.nunique() > 1 else None


def nothing(name: str, out, formats, why: str | None = None) -> None:
    """In place of figure `name`: why it is not measured, or that its experiment is not in this config."""
    fig, axes = grid(1, 1)
    axes[0][0].axis("off")
    text = (textwrap.fill(f"not measured: {why}", 40) if why
            else f"no {name.replace('_', ' ')} experiment in this config")
    axes[0][0].text(0.5, 0.5, text, ha="center", va="center")
    save(fig, out, formats, "")


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
    protocol: str = "teacher_forced"  # what scored its tables (or the protocols' comparison)


@dataclass(frozen=True)
class Figure:
    """A figure an experiment declares: `draw(canvas, out)`, and `drawn(canvas)`, whether the config ran
    what it shows (else it says so); its caption is workflow/report/<name>.rst."""
    draw: Callable
    drawn: Callable
    why: Callable = lambda canvas: None  # noqa: E731: what to say when it is not drawn (None: not in this config)


def style(settings: dict):
    """Seaborn with the config's plot style; its colour palette."""
    return _seaborn(settings).color_palette


