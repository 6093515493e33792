"""The experiments, each declared once. An entry names its settings section and results folder
(both its name), its jobs' wildcards, outputs and stage, the summary tables it feeds and what
they group by, its figures and its claims. The workflow's targets, the summary kinds, the report
groups, the figure list and the findings are all derived from `EXPERIMENTS`.

Adding an experiment means one module (its stage, jobs, figures and claims) and one entry here,
and its rule file (`workflow/rules/<name>.smk`), whose outputs come from the entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from editscale.workflow.experiments import batch, common, downstream, sequential, sweep, window
from editscale.workflow.job import Stage


@dataclass(frozen=True)
class Experiment:
    name: str  # its rule, its folder under the run's results and its settings section
    figures: dict  # figure name -> figures.Figure (caption: workflow/report/<name>.rst)
    claims: dict  # claim letter -> claim(findings.Runs) -> rows of the findings table
    stage: Stage | None = None  # None: it runs no job of its own (the window rides on batch and sequential)
    jobs: Callable | None = None  # (settings, chosen(), window()) -> each job's wildcards
    stem: str = ""  # one job's file name under <run>/<name>/, from its wildcards
    outputs: dict = field(default_factory=dict)  # output name -> suffix after the stem
    summaries: dict = field(default_factory=dict)  # summary kind -> (its output, the columns it groups by)
    collected: dict = field(default_factory=dict)  # table kind -> the output stacked as it is
    reads: tuple = ()  # other experiments' summary kinds it draws on
    summarise: Callable | None = None  # (per-item table, groups, options) -> summary; None: metrics.aggregate


EXPERIMENTS = {e.name: e for e in (
    Experiment("sweep", sweep.FIGURES, sweep.CLAIMS, sweep.STAGE, sweep.jobs, "{algorithm}-layer{layer}",
               sweep.OUTPUTS, sweep.SUMMARIES),
    Experiment("batch", batch.FIGURES, batch.CLAIMS, batch.STAGE, batch.jobs, "{algorithm}-layer{layer}-b{size}",
               batch.OUTPUTS, batch.SUMMARIES),
    Experiment("sequential", sequential.FIGURES, sequential.CLAIMS, sequential.STAGE, sequential.jobs,
               "{algorithm}-layer{layer}-b{size}", sequential.OUTPUTS, sequential.SUMMARIES, sequential.COLLECTED,
               summarise=sequential.summarise),
    Experiment("window", window.FIGURES, window.CLAIMS, reads=window.READS),
    Experiment("downstream", downstream.FIGURES, downstream.CLAIMS, downstream.STAGE, downstream.jobs,
               "layer{layer}", downstream.OUTPUTS, downstream.SUMMARIES, summarise=downstream.summarise),
)}

# Stages beside the experiments': the unedited model every result is read against, and the
# sweep's best layer (a checkpoint).
STAGES = {
    "baseline": Stage(common.baseline, lambda s, w: {"model": common.results(s.model),
                                                     "evaluation": common.results(s.evaluation)}),
    "best_layer": sweep.BEST_LAYER,
}
BASELINE_KIND = "baseline"  # the unedited model's summary, beside the experiments' kinds


def summary_groups() -> dict:
    """Every summary kind -> the columns it groups by (the baseline's: none)."""
    return {**{kind: list(groups) for e in EXPERIMENTS.values() for kind, (_, groups) in e.summaries.items()},
            BASELINE_KIND: []}


def summary_sources() -> dict:
    """Every summarised kind -> (experiment, output)."""
    return {kind: (e.name, output) for e in EXPERIMENTS.values() for kind, (output, _) in e.summaries.items()}


def summariser(kind: str):
    """What summarises a kind's per-item tables: its experiment's own, else None (metrics.aggregate)."""
    owner = summary_sources().get(kind)
    return EXPERIMENTS[owner[0]].summarise if owner else None


def collected_sources() -> dict:
    """Every stacked kind (quality, health) -> (experiment, output)."""
    return {kind: (e.name, output) for e in EXPERIMENTS.values() for kind, output in e.collected.items()}


def figures() -> dict:
    """Every figure name -> figures.Figure, in the experiments' order."""
    return {name: figure for e in EXPERIMENTS.values() for name, figure in e.figures.items()}


def claims() -> dict:
    """Every claim letter -> its claim function."""
    return {letter: claim for e in EXPERIMENTS.values() for letter, claim in e.claims.items()}


def read_layer(path) -> int:
    return sweep.read_layer(path)
