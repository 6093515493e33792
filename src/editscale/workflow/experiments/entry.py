"""What an experiment is: the one record its module exports as `EXPERIMENT`, read by the registry
(`experiments.EXPERIMENTS`), from which the workflow's targets, summary kinds, report groups,
figure list and findings are all derived."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

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
    # summary kind -> the grouping columns its `summarise` derives itself; every other grouping column
    # must be in each per-case table, checked when the summary is written
    derived: dict = field(default_factory=dict)
    # Its runs span the layers (the sweep): its tables are never narrowed to the chosen layer.
    across_layers: bool = False
    # summary kind -> (its per-case table, the baseline's) -> the unedited model's rows it starts from
    starts: dict = field(default_factory=dict)
    # (settings) -> the problems of its own settings with the rest (sizes that must divide n, ...)
    check: Callable | None = None
    # (every kind's per-case table, findings options) -> lines added below the findings table
    appendix: Callable | None = None
    # Other experiments' jobs it adds (the window's: each window run), as the `jobs` of the one it names:
    # experiment name -> (settings, chosen(), window()) -> wildcards.
    adds: dict = field(default_factory=dict)
    # Its live twin (rule `<name>_live`): the same runs read under the live protocol, writing the outputs
    # named here (each at its suffix with `.live` before it), and nothing that touches the model's edits.
    live: Stage | None = None
    live_outputs: tuple = ()
    # It compares the protocols (teacher-forced against live): its claims and figures read every protocol's
    # rows together, once, rather than each protocol's apart.
    across_protocols: bool = False
