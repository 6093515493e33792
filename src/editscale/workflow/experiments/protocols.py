"""Claim (c) under the three protocols a sequential run can be read by, each against one batch of all
N edits on the same cases (docs/design.md, "Protocols").

- **immediate** (the paper's): every batch's cases scored right after its own edit, averaged over
  all N cases. This is what scalable-model-editing/unified-model-editing's
  `evaluate_unified_editing.py` writes (one file per case, scored after its chunk's `apply_algo`)
  and its summaries average. Batch k of B is scored after k·B edits, so at B = N/4 the mean load
  when scored is 5N/8 edits, not N.
- **last batch**: only the last sequential batch's cases, scored after all N edits, as the one
  batch's are: both sides carry N edits, so only the batch size differs. It covers B cases.
- **retained**: every edit scored after all N edits (and, on the way, the k cases edited so far
  after k edits, against the one batch on those same k cases).

One batch of N is a run of the sequential grid whose B is N: every protocol scores it the same way
(all N cases after N edits).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from editscale.evaluation import metrics
from editscale.workflow import findings

PAPER = "immediate"
PROTOCOLS = {
    "immediate": "immediate, the paper's protocol: each batch's cases scored right after its own edit",
    "last batch": "immediate, last batch: its cases scored after all N edits, as the one batch's are",
    "retained": "retained: every edit scored after all N edits",
}
STRETCHES = 4  # the immediate curve pools each run's cases into this many stretches of N/4 edits (or one per batch)
SEQUENTIAL, ONE = "sequential", "one batch"


def paired(seq: pd.DataFrame, one: pd.DataFrame, options) -> findings.Paired:
    """A sequential run's cases and the one batch's, paired on the cases both hold."""
    return findings.Paired(pd.concat([seq.assign(side=SEQUENTIAL), one.assign(side=ONE)], ignore_index=True),
                           "side", options)


def gap(pair: findings.Paired, metric: str) -> tuple[float, float, float, tuple[float, float]]:
    """(sequential mean, one batch's mean, their difference, its paired 95% CI) of a metric or Score."""
    seq, one = pair.mean(SEQUENTIAL, metric), pair.mean(ONE, metric)
    return seq[0], one[0], seq[0] - one[0], findings.interval(seq[1] - one[1])


def last_batches(immediate: pd.DataFrame) -> pd.DataFrame:
    """The immediate rows of each run's last batch (the one batch's: all of them)."""
    last = immediate.groupby(["algorithm", "batch_size"]).batch.transform("max")
    return immediate[immediate.batch == last]


def finals(retained: pd.DataFrame) -> pd.DataFrame:
    """Each run's retained rows after its last batch."""
    return retained[retained.n_edits == retained.groupby(["algorithm", "batch_size"]).n_edits.transform("max")]


def sequential_vs_batch(immediate: pd.DataFrame, retained: pd.DataFrame, options) -> list[dict]:
    """(c) At equal total edits N, smaller sequential batches keep NS better than one batch of all of
    them, and the best sequential B is an intermediate one (the paper: 1024 of 4096), under each
    protocol, the paper's first. Each B is paired with the one batch over the same cases; the one
    batch must be in the grid (B = N)."""
    rows = []
    for algorithm in sorted(set(immediate.algorithm) | set(retained.algorithm)):
        seen_immediate = immediate[immediate.algorithm == algorithm]
        seen_retained = retained[retained.algorithm == algorithm]
        tables = {"immediate": seen_immediate, "last batch": last_batches(seen_immediate) if len(seen_immediate)
                  else seen_immediate, "retained": finals(seen_retained) if len(seen_retained) else seen_retained}
        for protocol, cases in tables.items():
            if len(cases):
                rows += keeps_specificity(cases, protocol, algorithm, options,
                                          path=seen_retained if protocol == "retained" else None)
        for protocol, cases in tables.items():
            if len(cases):
                rows += best_size(cases, protocol, algorithm, options)
    return rows


def _one_batch(cases: pd.DataFrame) -> tuple[int, list, bool]:
    n = int(cases.n_edits.max())
    sizes = sorted(int(b) for b in cases.batch_size.unique())
    return n, sizes, n in sizes and len(sizes) > 1


def _label(protocol: str) -> str:
    return protocol + (", the paper's" if protocol == PAPER else "")


def keeps_specificity(cases: pd.DataFrame, protocol: str, algorithm: str, options, path=None) -> list[dict]:
    """One row per sequential B: NS(B) − NS(one batch of N) on the same cases, with the paired ES and
    Score gaps and the mean edits in the model when the cases were scored. `path`: the retained
    points on the way, each against the one batch on the cases edited so far."""
    n, sizes, has_one = _one_batch(cases)
    if not has_one:
        return []
    one = cases[cases.batch_size == n]
    rows = []
    for size in sizes[:-1]:
        seq = cases[cases.batch_size == size]
        pair = paired(seq, one, options)
        spec = pair.specificity
        s, o, value, ci = gap(pair, spec)
        others = [f"{m} {diff:+.2f} [{low:.2f}, {high:.2f}]"
                  for m in (pair.efficacy, "Score") for _, _, diff, (low, high) in [gap(pair, m)]]
        load = float(seq[seq.case_id.isin(pair.case_ids)].n_edits.mean())
        detail = (f"{PROTOCOLS[protocol]}; {n} edits; {spec} {s:.1f} against {o:.1f}; on the same cases "
                  + ", ".join(others) + f"; mean edits in the model when scored: {load:.0f} against {n}")
        if path is not None:
            detail += _path(path[path.batch_size == size], path[(path.batch_size == n) & (path.n_edits == n)], spec,
                            options)
        rows.append(findings.finding(
            f"c. sequential keeps {spec} better than one batch ({algorithm}; {_label(protocol)})",
            f"{spec}(B = {size} × {-(-n // size)}) − {spec}(one batch of {n}), {protocol}", value, ci,
            findings.direction(*ci, +1), "smaller sequential batches keep NS better", pair.n, detail))
    return rows


def _path(seq: pd.DataFrame, one: pd.DataFrame, spec: str, options) -> str:
    """The retained points before N, each on the cases edited so far against the one batch on them."""
    parts = []
    for k in sorted(k for k in seq.n_edits.unique() if 0 < k < one.n_edits.max()):
        s, o, value, ci = gap(paired(seq[seq.n_edits == k], one, options), spec)
        parts.append(f"{int(k)}: {value:+.2f} [{ci[0]:.2f}, {ci[1]:.2f}] ({s:.1f} against {o:.1f})")
    return f"; {spec} against the one batch on the cases edited so far, after " + ", ".join(parts) if parts else ""


def best_size(cases: pd.DataFrame, protocol: str, algorithm: str, options) -> list[dict]:
    """The best B by Score over the grid (the one batch included), with P(best), ES and NS for every
    B, paired over the cases all B share. Under "last batch" each B covers other cases: not measured."""
    claim = f"c. the best sequential batch size is intermediate ({algorithm}; {_label(protocol)})"
    n, sizes, _ = _one_batch(cases)
    if len(sizes) < 2:
        return []
    if len(sizes) == 2:
        return [findings.not_measured(claim, f"a grid of two sizes (B = {sizes[0]}, {sizes[1]}) has no "
                                             "intermediate B")]
    if protocol == "last batch":
        return [findings.not_measured(claim, "each B's last batch holds other cases (its last B): no paired "
                                             "comparison across B")]
    grid = findings.Paired(cases, "batch_size", options)
    scores = {b: grid.mean(b, "Score") for b in grid.conditions}
    chance = findings.p_best({b: replicates for b, (_, replicates) in scores.items()})
    best = max(scores, key=lambda b: scores[b][0])
    smallest, largest = grid.conditions[0], grid.conditions[-1]
    ends = [b for b in (smallest, largest) if b != best]
    margins = {b: findings.interval(scores[best][1] - scores[b][1]) for b in ends}
    if best in (smallest, largest):
        beaten = [b for b in grid.conditions if b != best]
        verdict = (findings.CONTRADICTED if all(findings.interval(scores[best][1] - scores[b][1])[0] > 0
                                                for b in beaten) else findings.INCONCLUSIVE)
    else:
        verdict = findings.REPRODUCED if all(ci[0] > 0 for ci in margins.values()) else findings.INCONCLUSIVE
    worst = min(margins, key=lambda b: scores[best][0] - scores[b][0])
    per_size = "; ".join(
        f"B = {b}: Score {s[0]:.1f} [{findings.interval(s[1])[0]:.1f}, {findings.interval(s[1])[1]:.1f}], "
        f"{grid.efficacy} {grid.mean(b, grid.efficacy)[0]:.1f}, {grid.specificity} "
        f"{grid.mean(b, grid.specificity)[0]:.1f}, P(best) {chance[b]:.2f}" for b, s in scores.items())
    return [findings.finding(claim, f"Score(best B = {best}) − Score(B = {worst}), {protocol}",
                             scores[best][0] - scores[worst][0], margins[worst], verdict, "B = 1024 of 4096 edits",
                             grid.n, f"{PROTOCOLS[protocol]}; {n} edits; best B = {best}; {per_size}")]


def stretch(cases: pd.DataFrame) -> pd.Series:
    """The stretch of edits an immediate case was scored in: the end of its run's k-th N/STRETCHES
    edits (or of its own batch, where B is longer), so B = 1, 16 and 64 over 256 edits share the
    stretches 64, 128, 192 and 256."""
    n = cases.groupby(["algorithm", "batch_size"]).n_edits.transform("max")
    width = np.maximum(cases.batch_size, n // STRETCHES).clip(lower=1)
    return np.minimum(-(-cases.n_edits // width) * width, n).astype(int)


def summarise(cases: pd.DataFrame, groups: list, options) -> pd.DataFrame:
    """Each group's mean and 95% CI (metrics.aggregate) and, beside every sequential point, the one
    batch of all N on the same cases: its mean (`one_batch`), the paired difference and its CI
    (`versus_one_batch`, `versus_low`, `versus_high`) and the mean edits in the model when the
    point's cases were scored (`load`). Immediate cases are pooled by stretch of edits."""
    if "stretch" in groups:
        cases = cases.assign(stretch=stretch(cases))
    table = metrics.aggregate(cases, by=groups, n_boot=options.n_boot, seed=options.seed)
    point = [g for g in groups if g in ("stretch", "n_edits")]
    loads = cases.groupby(groups).n_edits.mean().rename("load").reset_index()
    table = table.merge(loads, on=groups, how="left")
    rows = []
    for key, run in cases.groupby(["algorithm", "layers"]):
        n, sizes, has_one = _one_batch(run)
        if not has_one:
            continue
        one = run[(run.batch_size == n) & (run.n_edits == n)]
        for at, seq in run[run.batch_size != n].groupby(["batch_size", *point]):
            if point and seq.n_edits.max() == 0:
                continue  # the unedited start of a retained line
            pair = paired(seq, one, options)
            for metric in (*pair.metrics, "Score"):
                _, o, value, (low, high) = gap(pair, metric)
                rows.append(dict(zip(["algorithm", "layers", "batch_size", *point], (*key, *np.atleast_1d(at))),
                                 metric=metric, one_batch=o, versus_one_batch=value, versus_low=low, versus_high=high))
    if not rows:
        return table.assign(one_batch=np.nan, versus_one_batch=np.nan, versus_low=np.nan, versus_high=np.nan)
    versus = pd.DataFrame(rows)
    return table.merge(versus.astype({c: table[c].dtype for c in versus if c in table and c != "metric"}),
                       on=[c for c in versus if c in table], how="left")
