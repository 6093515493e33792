"""Batch editing (claims b and d): N edits in independent batches of B, each solved against the
unedited model, at the chosen layer or spread over the chosen window."""

from __future__ import annotations

import numpy as np
import pandas as pd

from editscale import algorithms
from editscale.evaluation.metrics import LIVE
from editscale.workflow import figures, findings
from editscale.workflow.experiments import common
from editscale.workflow.experiments.entry import Experiment
from editscale.workflow.experiments.independent import independent
from editscale.workflow.findings import Paired, direction, equivalence, finding, interval, largest_gap
from editscale.workflow.job import Job, Stage


def run(job: Job) -> None:
    independent(job, job.settings.data.n)


def run_live(job: Job) -> None:
    independent(job, job.settings.data.n, LIVE)


def jobs(s, chosen, window) -> list[dict]:
    """Every algorithm at every B at the chosen layer (`chosen()`; the window adds its own runs)."""
    return [{"algorithm": a, "layer": chosen(), "size": b} for a in s.batch.algorithms for b in s.batch.sizes]


def claim_b(runs: findings.Runs) -> list[dict]:
    batch = runs.chosen["batch"]
    return batch_size_effect(batch, runs.options) if len(batch) else []


def claim_d(runs: findings.Runs) -> list[dict]:
    batch = runs.chosen["batch"]
    return memit_vs_emmet(batch, runs.options) if len(batch) else []


def batch_size_effect(batch: pd.DataFrame, options) -> list[dict]:
    """(b) NS (the dataset's specificity) falls as the batch size grows: slope per doubling and
    largest minus smallest B."""
    rows = []
    for algorithm in sorted(batch.algorithm.unique()):
        sizes = Paired(batch[batch.algorithm == algorithm], "batch_size", options)
        if len(sizes.conditions) < 2:
            continue
        x = np.log2(np.array(sizes.conditions, dtype=float))
        spec = sizes.specificity
        ns = [sizes.mean(b, spec) for b in sizes.conditions]
        y, y_boot = np.array([m for m, _ in ns]), np.stack([r for _, r in ns], 1)  # (n_boot, n_sizes)
        xc = x - x.mean()
        slope, slope_boot = float(xc @ (y - y.mean()) / (xc @ xc)), (y_boot - y_boot.mean(1, keepdims=True)) @ xc / (xc @ xc)
        ci = interval(slope_boot)
        span = f"B = {sizes.conditions[0]} to {sizes.conditions[-1]}"
        rows.append(finding(f"b. {spec} falls as B grows ({algorithm})", f"slope of {spec} per doubling of B", slope, ci,
                         direction(*ci, -1), "NS falls as B grows", sizes.n, span))
        diff = y[-1] - y[0]
        ci = interval(y_boot[:, -1] - y_boot[:, 0])
        rows.append(finding(f"b. {spec} falls as B grows ({algorithm})", f"{spec}(B = {sizes.conditions[-1]}) − "
                         f"{spec}(B = {sizes.conditions[0]})", diff, ci, direction(*ci, -1), "NS falls as B grows",
                         sizes.n))
    return rows


def memit_vs_emmet(batch: pd.DataFrame, options) -> list[dict]:
    """(d) MEMIT ≈ EMMET: the largest paired Score difference over the batch sizes; one row for EMMET
    and one for each EMMET variant in the grid (emmet@emmet_lambda=1: its λ), at the sizes both ran."""
    if "memit" not in set(batch.algorithm):
        return []
    emmets = sorted(a for a in batch.algorithm.unique() if algorithms.variant(a)[0].name == "emmet")
    rows = []
    for emmet_name in emmets:
        overrides = algorithms.variant(emmet_name)[1]
        label = "EMMET" + (f" ({', '.join(f'{k}={v:g}' for k, v in overrides.items())})" if overrides else "")
        found = largest_gap(batch, "batch_size", "memit", emmet_name, options)
        if found is None:
            continue
        size, gap, replicates, n = found
        ci = interval(replicates)
        rows.append(finding(f"d. MEMIT ≈ {label}", f"largest Score(MEMIT) − Score({label}), at B = {size}", gap, ci,
                         equivalence(*ci, options.margin), "similar at every batch size", n,
                         f"margin ±{options.margin:g} Score points"))
    return rows


def draw(summary: pd.DataFrame, baseline: pd.DataFrame, colors, out, formats) -> None:
    headline = figures.headline(summary)
    fig, axes = figures.grid(1, len(headline))
    sizes = sorted(summary.batch_size.unique())
    for ax, metric in zip(axes[0], headline):
        for color, (algorithm, part) in zip(colors, summary[summary.metric == metric].groupby("algorithm")):
            figures.band(ax, part, "batch_size", algorithm, color)
        figures.unedited(ax, figures.baseline_of(baseline, metric))
        figures.metric_axis(ax, metric)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(b) for b in sizes], rotation=45)  # set level, the labels 1024 and 2048 touch
        ax.minorticks_off()
        ax.set_xlabel("batch size B")
    figures.save(fig, out, formats, f"Batch editing from the unedited model, mean and 95% CI {figures.note(summary)}")


def check(s) -> list[str]:
    return common.whole_batches("batch.sizes", s.batch.sizes, s.data.n, "data.n")


STAGE = Stage(run, lambda s, w: {**common.counted_edit(s, w), "n": s.data.n})
LIVE_STAGE = Stage(run_live, STAGE.counts)
EXPERIMENT = Experiment(
    "batch", figures={"batch": figures.Figure(
        lambda c, out: draw(c.tables["batch"], c.tables["baseline"], c.colors, out, c.formats),
        lambda c: len(c.tables["batch"]))}, claims={"b": claim_b, "d": claim_d}, stage=STAGE, jobs=jobs,
    stem="{algorithm}-layer{layer}-b{size}", outputs={"nll": ".nll.parquet", "cases": ".cases.parquet"},
    summaries={"batch": ("cases", ("algorithm", "layer", "layers", "batch_size"))}, check=check, live=LIVE_STAGE,
    live_outputs=("nll", "cases"))
