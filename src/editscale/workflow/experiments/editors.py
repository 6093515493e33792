"""Finding (i), the 2026 answer to the paper's question: once earlier keys are kept in the normal
equations (MEMIT_seq, RLSEdit, AlphaEdit, SPHERE) or protected by a shrinking projector (EvoEdit),
is sequential editing as good as one batch of all N edits, and which editor keeps most?

- per editor and sequential B: Score(sequential B) − Score(one batch of N), paired on the same cases,
  under the retained protocol (every edit after all N) and the paper's immediate one; "as good" is
  an equivalence verdict within `findings.margin` Score points (its CI inside ±margin);
- per sequential B: the editor with the best Score after all N edits, against each other editor on
  the same cases (Score, the efficacy and specificity beside it), with P(best);
- NAS on against off (`<editor>+nas` against `<editor>`) at batch editing's largest B.

It runs no job: it reads the sequential and batch tables. The downstream check of each run's end is
(g)'s (experiments/downstream.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from editscale.workflow import figures, findings
from editscale.workflow.experiments import protocols
from editscale.workflow.experiments.entry import Experiment
from editscale.workflow.findings import INCONCLUSIVE, Paired, equivalence, finding, interval, p_best

PAPER = "the paper: sequential batches beat one batch in NS; OTE-SE: with earlier keys kept, sequential = one batch"
NAS = "+nas"


def claim_i(runs: findings.Runs) -> list[dict]:
    options = runs.options
    rows = []
    retained, immediate = runs.chosen["retained"], runs.chosen["immediate"]
    for protocol, cases in (("retained", protocols.finals(retained) if len(retained) else retained),
                            (protocols.PAPER, immediate)):
        for algorithm in sorted(cases.algorithm.unique()) if len(cases) else []:
            rows += as_good(cases[cases.algorithm == algorithm], protocol, algorithm, options)
    if len(retained):
        finals = protocols.finals(retained)
        n = int(finals.n_edits.max())
        for size in sorted(b for b in finals.batch_size.unique() if b < n):
            rows += keeps_most(finals[finals.batch_size == size], int(size), n, options)
    rows += nas_effect(runs.chosen["batch"], options)
    return rows


def as_good(cases: pd.DataFrame, protocol: str, algorithm: str, options) -> list[dict]:
    """Score(B) − Score(one batch of N) on the same cases, one row per sequential B, its efficacy and
    specificity gaps in the detail."""
    n, sizes, has_one = protocols._one_batch(cases)
    if not has_one:
        return []
    one = cases[cases.batch_size == n]
    rows = []
    for size in sizes[:-1]:
        pair = protocols.paired(cases[cases.batch_size == size], one, options)
        s, o, value, ci = protocols.gap(pair, "Score")
        others = ", ".join(f"{m} {d:+.1f} [{lo:.1f}, {hi:.1f}] ({a:.1f} against {b:.1f})"
                           for m in (pair.efficacy, pair.specificity)
                           for a, b, d, (lo, hi) in [protocols.gap(pair, m)])
        rows.append(finding(
            f"i. sequential editing is as good as one batch ({algorithm}; {protocols.PROTOCOLS[protocol].split(':')[0]})",
            f"Score(B = {size} × {-(-n // size)}) − Score(one batch of {n}), within ±{options.margin:g}",
            value, ci, equivalence(*ci, options.margin), PAPER, pair.n,
            f"{protocols.PROTOCOLS[protocol]}; Score {s:.1f} against {o:.1f}; on the same cases {others}"))
    return rows


def keeps_most(finals: pd.DataFrame, size: int, n: int, options) -> list[dict]:
    """The editor with the best Score after all N sequential edits of B, against the runner-up on the same
    cases; every editor's Score, efficacy and specificity, and its Score gap to the best, in the detail."""
    if finals.algorithm.nunique() < 2:
        return []
    pair = Paired(finals, "algorithm", options)
    scores = {a: pair.mean(a, "Score") for a in pair.conditions}
    chance = p_best({a: r for a, (_, r) in scores.items()})
    ranked = sorted(scores, key=lambda a: -scores[a][0])
    best, second = ranked[:2]
    ci = interval(scores[best][1] - scores[second][1])
    verdict = f"{best} keeps most" if ci[0] > 0 else INCONCLUSIVE

    def line(a):
        low, high = interval(scores[a][1])
        gap = "" if a == best else f", {scores[a][0] - scores[best][0]:+.1f} " + "[{:.1f}, {:.1f}]".format(
            *interval(scores[a][1] - scores[best][1]))
        return (f"{a}: Score {scores[a][0]:.1f} [{low:.1f}, {high:.1f}]{gap}, {pair.efficacy} "
                f"{pair.mean(a, pair.efficacy)[0]:.1f}, {pair.specificity} {pair.mean(a, pair.specificity)[0]:.1f}, "
                f"P(best) {chance[a]:.2f}")

    return [finding(f"i. the editor that keeps most after {n} sequential edits (B = {size})",
                    f"Score({best}) − Score({second}), retained after all {n}", scores[best][0] - scores[second][0],
                    ci, verdict, "OTE-SE: MEMIT_seq ≥ AlphaEdit", pair.n,
                    f"{protocols.PROTOCOLS['retained']}; on the same cases, best first: "
                    + "; ".join(line(a) for a in ranked))]


def nas_effect(batch: pd.DataFrame, options) -> list[dict]:
    """Score, efficacy and specificity of `<editor>+nas` against `<editor>` at the largest batch both ran."""
    rows = []
    if not len(batch):
        return rows
    for with_nas in sorted(a for a in batch.algorithm.unique() if a.endswith(NAS)):
        plain = with_nas.removesuffix(NAS)
        both = batch[batch.algorithm.isin([plain, with_nas])]
        shared = sorted(set(both.batch_size[both.algorithm == plain]) & set(both.batch_size[both.algorithm == with_nas]))
        if not shared:
            continue
        size = shared[-1]
        pair = Paired(both[both.batch_size == size], "algorithm", options)
        gaps = {m: (pair.mean(with_nas, m), pair.mean(plain, m)) for m in ("Score", pair.efficacy, pair.specificity)}
        value = gaps["Score"][0][0] - gaps["Score"][1][0]
        ci = interval(gaps["Score"][0][1] - gaps["Score"][1][1])
        detail = ", ".join(f"{m} {a[0]:.1f} against {b[0]:.1f}, {a[0] - b[0]:+.1f} "
                           + "[{:.1f}, {:.1f}]".format(*interval(a[1] - b[1])) for m, (a, b) in gaps.items())
        rows.append(finding(f"i. NAS changes one batch of {size} ({plain})",
                            f"Score({with_nas}) − Score({plain}), one batch of {size}", value, ci,
                            findings.direction(*ci, +1), "NAS: norm anchoring helps", pair.n,
                            f"batch editing; on the same cases {detail}"))
    return rows


def draw(retained: pd.DataFrame, colors, out, formats) -> None:
    """Every editor after all N sequential edits: Score and the headline metrics with 95% CIs, each
    sequential B filled and the one batch of N hollow."""
    finals = protocols.finals(retained[retained.n_edits > 0])
    metrics = figures.headline(finals)
    n = int(finals.n_edits.max())
    editors = sorted(finals.algorithm.unique())
    sizes = sorted(int(b) for b in finals.batch_size.unique())
    fig, axes = figures.grid(1, len(metrics), width=max(2.7, 0.45 * len(editors)))
    for ax, metric in zip(axes[0], metrics):
        for k, (size, color) in enumerate(zip(sizes, colors)):
            part = finals[(finals.metric == metric) & (finals.batch_size == size)].set_index("algorithm")
            x = np.arange(len(editors)) + (k - (len(sizes) - 1) / 2) * 0.2
            shown = [e in part.index for e in editors]
            rows = part.reindex(editors)
            label = f"one batch of {n}" if size == n else f"B = {size}"
            ax.errorbar(x[shown], rows["mean"][shown], yerr=[(rows["mean"] - rows.ci_low)[shown],
                                                              (rows.ci_high - rows["mean"])[shown]],
                        fmt="o", ms=4, color=color, mfc="none" if size == n else color, capsize=2, label=label)
        figures.metric_axis(ax, metric)
        ax.set_xticks(range(len(editors)), editors, rotation=60, ha="right")
    figures.save(fig, out, formats, f"Every editor after {n} sequential edits, mean and 95% CI {figures.note(finals)}")


def _runs(canvas) -> bool:
    retained = canvas.tables["retained"]
    return len(retained) > 0 and retained.algorithm.nunique() > 1


EXPERIMENT = Experiment(
    "editors", figures={"editors": figures.Figure(lambda c, out: draw(c.tables["retained"], c.colors, out, c.formats),
                                                  _runs)},
    claims={"i": claim_i}, reads=("batch", "retained", "immediate"))
