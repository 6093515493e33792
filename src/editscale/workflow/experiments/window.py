"""Finding (f), beyond the paper: the chosen layer against a window of layers ending there (MEMIT's
spread), at the largest batch and at the end of the longest sequential run. It runs no job of its
own: it adds its runs to batch editing's and sequential editing's jobs (`adds`), every algorithm
that can take a window."""

from __future__ import annotations

import pandas as pd

from editscale import settings
from editscale.algorithms import variant
from editscale.workflow import figures, findings
from editscale.workflow.experiments.entry import Experiment
from editscale.workflow.findings import Paired, direction, finding, interval, not_measured


def claim_f(runs: findings.Runs) -> list[dict]:
    if "f" in runs.missing:
        return [not_measured("f. a window keeps NS better than one layer", runs.missing["f"])]
    if runs.window is None:
        return []
    return window_vs_layer(runs.every["batch"], runs.every["retained"], runs.layer, runs.window, runs.options)


def at_window(algorithms, size: int, window) -> list[dict]:
    """A job for each algorithm that takes a window, at (f)'s window (`window()`, or None: no jobs)."""
    spread = window()
    if spread is None:
        return []
    return [{"algorithm": a, "layer": spread, "size": size} for a in algorithms if variant(a)[0].window]


def window_vs_layer(batch: pd.DataFrame, retained: pd.DataFrame, layer: str, window: str,
                    options) -> list[dict]:
    """(f), beyond the paper: one layer against a window of layers ending there (MEMIT's spread), at
    the largest batch size both were run at, and at the end of the longest sequential run (the
    smallest B): NS (the dataset's specificity) and Score, window minus one layer, paired over the
    same cases. The verdict is read against the hypothesis that spreading keeps NS better."""
    rows = []
    for experiment, table, pick in (("batch", batch, max), ("sequential", retained, min)):
        if not len(table) or "layers" not in table:
            continue
        table = table[table["layers"].astype(str).isin([layer, window])]
        for algorithm in sorted(table.algorithm.unique()):
            runs = table[table.algorithm == algorithm]
            sizes = [b for b in runs.batch_size.unique()
                     if set(runs[runs.batch_size == b]["layers"].astype(str)) == {layer, window}]
            if not sizes:
                continue
            size = pick(sizes)
            runs = runs[runs.batch_size == size]
            if experiment == "sequential":
                runs = runs[runs.n_edits == runs.n_edits.max()]
            n_edits = int(runs.n_edits.max()) if "n_edits" in runs and runs.n_edits.notna().any() else None
            pair = Paired(runs.assign(layers=runs["layers"].astype(str)), "layers", options)
            where = (f"B = {size}, {pair.n} edits" if experiment == "batch" else
                     f"{n_edits} sequential edits in batches of {size}")
            for metric in (pair.specificity, "Score"):
                spread, one = pair.mean(window, metric), pair.mean(layer, metric)
                ci = interval(spread[1] - one[1])
                claim = (f"keeps {pair.specificity} better" if metric == pair.specificity else "scores better")
                rows.append(finding(f"f. a window {claim} than one layer ({algorithm}, {experiment})",
                                 f"{metric}(layers {window}) − {metric}(layer {layer}), {where}",
                                 spread[0] - one[0], ci, direction(*ci, +1),
                                 "(not in the paper; MEMIT spreads edits over layers)", pair.n,
                                 f"{metric} {spread[0]:.1f} over layers {window} against {one[0]:.1f} at layer {layer}"))
    return rows


def draw(batch: pd.DataFrame, retained: pd.DataFrame, layer: str, spread: str, colors, out, formats) -> None:
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
    headline = figures.headline(batch if len(batch) else retained)
    metrics = [headline[-1], "Score"]
    fig, axes = figures.grid(1, len(metrics), width=3.6)
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
        figures.metric_axis(ax, metric)
        ax.set_xticks(range(len(ticks)), ticks, fontsize=7)
        ax.set_xlim(-0.5, len(ticks) - 0.5)  # each pair centred on its tick, clear of the frame
    figures.save(fig, out, formats, f"One layer against a window of layers, mean and 95% CI {figures.note(batch)}")


def check(s) -> list[str]:
    w, problems = s.window, []
    if w.layers or w.size:
        if s.layer != "auto" and len(settings.window(s.layer)) > 1:
            problems.append(f"window compares one layer with a window, but layer = {list(settings.window(s.layer))} "
                            f"is a window already; name one layer (or auto), or drop window")
        if w.layers and len(w.layers) < 2 or w.size == 1:
            problems.append("window.layers needs two or more layers (or window.size two or more); one layer is "
                            "the single-layer edit")
    if s.layer != "auto" and w.size and not w.layers and len(settings.window(s.layer)) == 1 \
            and settings.compared_window(w, s.layer) is None:
        problems.append(f"window.size = {w.size} takes the layers ending at layer {settings.window(s.layer)[0]}, "
                        f"which has none below it, so finding (f) could not be measured; name window.layers, or a "
                        f"later layer")
    return problems


EXPERIMENT = Experiment(
    "window", figures={"window": figures.Figure(
        lambda c, out: draw(c.every["batch"], c.every["retained"], c.layer, c.window, c.colors, out, c.formats),
        lambda c: c.window is not None and (len(c.every["batch"]) or len(c.every["retained"])),
        lambda c: c.missing.get("f"))}, claims={"f": claim_f},
    reads=("batch", "retained"), check=check,  # reads: the summaries of the runs it compares
    adds={"batch": lambda s, chosen, window: at_window(s.batch.algorithms, max(s.batch.sizes), window),
          # the smallest B: the longest sequential run
          "sequential": lambda s, chosen, window: at_window(s.sequential.algorithms, min(s.sequential.sizes), window)})
