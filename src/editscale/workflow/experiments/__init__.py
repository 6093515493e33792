"""The experiments, each declared once, in its own module of this package, as that module's
`EXPERIMENT` (`entry.Experiment`): its settings section and results folder (both its name), its
jobs' wildcards, outputs and stage, the summary tables it feeds and what they group by, its figures
and its claims. The registry finds them itself: every module here that exports an `EXPERIMENT`.
The workflow's targets, the summary kinds, the report groups, the figure list, the findings and the
rule files Snakemake includes are all derived from `EXPERIMENTS`.

Adding an experiment means its module here, its rule file (`workflow/rules/<name>.smk`, whose
outputs come from the entry) and its figures' captions (`workflow/report/<figure>.rst`), and
nothing else (docs/design.md; tests/test_experiment_added.py adds one in a copy of the package).
"""

from __future__ import annotations

import importlib
import pkgutil

from editscale.evaluation.metrics import LIVE, TEACHER_FORCED
from editscale.workflow.experiments import common, sweep
from editscale.workflow.experiments.entry import Experiment
from editscale.workflow.job import Stage


def _found() -> list[Experiment]:
    """Every module of this package that exports an `EXPERIMENT`, in the order of their claims' letters
    (the paper's a–e, then this project's), which orders the figures and the findings table too."""
    entries = []
    for module in pkgutil.iter_modules(__path__):
        entry = getattr(importlib.import_module(f"{__name__}.{module.name}"), "EXPERIMENT", None)
        if entry is not None:
            if entry.name != module.name:
                raise ImportError(f"{__name__}.{module.name} exports the experiment {entry.name!r}: an experiment's "
                                  f"module is named after it (its rule file, settings section and folder are)")
            entries.append(entry)
    return sorted(entries, key=lambda e: (min(e.claims, default="~"), e.name))


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in _found()}

# Stages beside the experiments': the unedited model every result is read against, and the
# sweep's best layer (a checkpoint).
STAGES = {
    "baseline": Stage(common.baseline, lambda s, w: {"model": common.results(s.model),
                                                     "evaluation": common.scoring_counts(s.evaluation)}),
    "baseline_live": Stage(lambda job: common.baseline(job, LIVE), lambda s, w: {"model": common.results(s.model)}),
    "best_layer": sweep.BEST_LAYER,
}
BASELINE_KIND = "baseline"  # the unedited model's summary, beside the experiments' kinds


def checks() -> list:
    """Every experiment's own cross-key check, for `settings.check(..., more=checks())`."""
    return [e.check for e in EXPERIMENTS.values() if e.check is not None]


def jobs(name: str, s, chosen, window) -> list[dict]:
    """Every job of experiment `name` in this config: its own, then those other experiments add to it
    (the window's runs), each as its wildcards."""
    entry = EXPERIMENTS[name]
    own = entry.jobs(s, chosen, window) if entry.jobs else []
    return own + [w for e in EXPERIMENTS.values() if name in e.adds for w in e.adds[name](s, chosen, window)]


def live_stages() -> dict:
    """Every experiment's live twin, as its rule names it (`<experiment>_live`): the same runs, read
    under the live protocol."""
    return {f"{e.name}_live": e.live for e in EXPERIMENTS.values() if e.live is not None}


def summary_groups() -> dict:
    """Every summary kind -> the columns it groups by (the baseline's: none). Each protocol is
    summarised apart (`report.summarise`), so no summariser needs to know them."""
    return {**{kind: list(groups) for e in EXPERIMENTS.values() for kind, (_, groups) in e.summaries.items()},
            BASELINE_KIND: []}


def summary_sources() -> dict:
    """Every summarised kind -> (experiment, output)."""
    return {kind: (e.name, output) for e in EXPERIMENTS.values() for kind, (output, _) in e.summaries.items()}


def owner(kind: str) -> Experiment | None:
    """The experiment whose summary `kind` is (None: the baseline's)."""
    source = summary_sources().get(kind)
    return EXPERIMENTS[source[0]] if source else None


def at_chosen_layer(kind: str) -> bool:
    """Whether a kind's tables are read at the chosen layer (every kind's but the sweep's, which spans
    the layers, and the baseline's, which has none)."""
    entry = owner(kind)
    return entry is not None and not entry.across_layers


def collected_sources() -> dict:
    """Every stacked kind (quality, health) -> (experiment, output)."""
    return {kind: (e.name, output) for e in EXPERIMENTS.values() for kind, output in e.collected.items()}


def figures() -> dict:
    """Every figure name -> figures.Figure, in the experiments' order."""
    return {name: figure for e in EXPERIMENTS.values() for name, figure in e.figures.items()}


def protocols_of(entry: Experiment, protocols) -> list:
    """The protocols an experiment's claims and figures are read under, each apart: every one asked for
    where its runs are scored under them (it has a live twin, or reads a kind that has), else teacher
    forcing alone; none for one that compares the protocols (`across_protocols`), which reads them together."""
    if entry.across_protocols:
        return []
    scored = entry.live is not None or any(owner(kind) is not None and owner(kind).live is not None
                                           for kind in entry.reads)
    return list(protocols) if scored else [TEACHER_FORCED]


def figure_files(protocols) -> dict:
    """Every figure's file name -> the figure it draws: `<figure>` teacher-forced, `<figure>-live` live
    (`protocols_of`); a figure across protocols once, under its own name."""
    return {f"{name}{suffix(p)}": name for e in EXPERIMENTS.values()
            for p in (protocols_of(e, protocols) or [TEACHER_FORCED]) for name in e.figures}


def suffix(protocol: str) -> str:
    """A protocol's mark in a figure's file name: none for teacher-forced, `-live` for live."""
    return "" if protocol == TEACHER_FORCED else f"-{protocol}"


def claims() -> dict:
    """Every claim letter -> its claim function."""
    return {letter: claim for e in EXPERIMENTS.values() for letter, claim in e.claims.items()}


def appendix(every: dict, options) -> list[str]:
    """The lines every experiment adds below the findings table."""
    return [line for e in EXPERIMENTS.values() if e.appendix for line in e.appendix(every, options)]


def read_layer(path) -> int:
    return sweep.read_layer(path)
