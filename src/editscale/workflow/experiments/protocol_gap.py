"""Finding (h), beyond the paper: how far teacher forcing is from what a user sees. The gap
teacher-forced − live in efficacy and specificity (kept), paired on the same cases, for every batch
size of batch editing (N edits in batches of B) and of sequential editing (every edit after all N,
retained), and whether it grows with B. The Mirage paper (WILD, ACL 2025) finds live scores far
below teacher-forced ones, and sequential editing failing first: a gap that shrinks as B grows.

It runs no job: it reads the batch and retained tables of both protocols together
(`across_protocols`)."""

from __future__ import annotations

import pandas as pd

from editscale.evaluation.metrics import LIVE, TEACHER_FORCED
from editscale.workflow import figures, findings
from editscale.workflow.experiments import protocols
from editscale.workflow.experiments.entry import Experiment
from editscale.workflow.findings import INCONCLUSIVE, Paired, direction, finding, interval

# kind -> (its label, the sign the Mirage paper leads one to expect of gap(largest B) − gap(smallest B))
SETTINGS = {"batch": ("batch editing", +1), "retained": ("sequential editing, retained", -1)}
PAPER = "the Mirage paper: live far below teacher-forced, worst in sequential editing"


def claim_h(runs: findings.Runs) -> list[dict]:
    rows = []
    for kind, (label, sign) in SETTINGS.items():
        table = runs.chosen[kind]
        if kind == "retained" and len(table):
            table = protocols.finals(table)
        if not _both(table):
            continue
        for algorithm in sorted(table.algorithm.unique()):
            rows += gap_by_size(table[table.algorithm == algorithm], label, sign, algorithm, runs.options)
    return rows


def gap_by_size(cases: pd.DataFrame, label: str, sign: int, algorithm: str, options) -> list[dict]:
    """One row per headline metric that can be read both ways (efficacy, specificity): the gap at the
    largest B, and how it changes from the smallest B, every B's gap in the detail; all on one paired
    resampling of the cases every B and both protocols scored."""
    cases = cases.assign(condition=cases.batch_size.astype(str) + "|" + cases.protocol)
    pair = Paired(cases, "condition", options)
    sizes = sorted({int(c.split("|")[0]) for c in pair.conditions})
    n_edits = int(cases.n_edits.max()) if "n_edits" in cases else None
    rows = []
    for metric in (pair.efficacy, pair.specificity):
        gaps = {}
        for b in sizes:
            tf, lv = pair.mean(f"{b}|{TEACHER_FORCED}", metric), pair.mean(f"{b}|{LIVE}", metric)
            gaps[b] = (tf[0] - lv[0], tf[1] - lv[1], tf[0], lv[0])
        detail = "; ".join(f"B = {b}: {g[2]:.1f} − {g[3]:.1f} = {g[0]:+.1f} [{interval(g[1])[0]:.1f}, "
                           f"{interval(g[1])[1]:.1f}]" for b, g in gaps.items())
        edits = f", {n_edits} edits" if n_edits else ""
        largest = sizes[-1]
        ci = interval(gaps[largest][1])
        verdict = "live below teacher-forced" if ci[0] > 0 else "live above teacher-forced" if ci[1] < 0 \
            else INCONCLUSIVE
        rows.append(finding(f"h. teacher-forced − live {metric} ({label}; {algorithm})",
                            f"{metric} teacher-forced − live at B = {largest}{edits}", gaps[largest][0], ci, verdict,
                            PAPER, pair.n, f"teacher-forced − live per B: {detail}"))
        if len(sizes) > 1:
            change = gaps[largest][1] - gaps[sizes[0]][1]
            ci = interval(change)
            rows.append(finding(f"h. the {metric} gap changes with B ({label}; {algorithm})",
                                f"gap(B = {largest}) − gap(B = {sizes[0]}){edits}", gaps[largest][0] - gaps[sizes[0]][0],
                                ci, direction(*ci, sign), "grows with B" if sign > 0 else "shrinks as B grows",
                                pair.n, f"paired over the {pair.n} cases every B and both protocols scored"))
    return rows


def draw(batch: pd.DataFrame, retained: pd.DataFrame, colors, out, formats) -> None:
    """Efficacy and specificity against B under both protocols (teacher-forced dashed, live solid), one
    row for batch editing and one for sequential editing (every edit after all N), a colour per algorithm."""
    finals = protocols.finals(retained[retained.n_edits > 0]) if len(retained) else retained
    shown = [(label, t) for (label, _), t in zip(SETTINGS.values(), (batch, finals)) if len(t)]
    metrics = figures.headline(shown[0][1])[1:]
    metrics = [metrics[0], metrics[2]]
    fig, axes = figures.grid(len(shown), len(metrics))
    for row, (label, table) in zip(axes, shown):
        sizes = sorted(table.batch_size.unique())
        for ax, metric in zip(row, metrics):
            for color, (algorithm, part) in zip(colors, table[table.metric == metric].groupby("algorithm")):
                for protocol, ls in ((TEACHER_FORCED, "--"), (LIVE, "-")):
                    figures.band(ax, part[part.protocol == protocol], "batch_size",
                                 f"{algorithm}, {figures.PROTOCOL_NAMES[protocol]}", color, ls)
            figures.metric_axis(ax, metric)
            ax.set_xscale("log", base=2)
            ax.set_xticks(sizes, [str(b) for b in sizes], rotation=45)
            ax.minorticks_off()
            ax.set_xlabel("batch size B")
        row[0].set_ylabel(label)
    figures.save(fig, out, formats, "Teacher-forced (dashed) against live decoding (solid), mean and 95% CI "
                                    f"{figures.note(shown[0][1])}")


def _both(table: pd.DataFrame) -> bool:
    return len(table) > 0 and "protocol" in table and {TEACHER_FORCED, LIVE} <= set(table.protocol)


EXPERIMENT = Experiment(
    "protocol_gap", figures={"protocol_gap": figures.Figure(
        lambda c, out: draw(c.tables["batch"], c.tables["retained"], c.colors, out, c.formats),
        lambda c: _both(c.tables["batch"]) or _both(c.tables["retained"]),
        lambda c: "evaluation.protocols lists teacher_forced alone: add live to compare them")},
    claims={"h": claim_h}, reads=("batch", "retained"), across_protocols=True)
