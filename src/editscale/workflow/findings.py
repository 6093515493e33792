"""The paper's claims as statistics with seeded bootstrap 95% CIs and a verdict each, from the
per-case tables alone (docs/design.md §3).

Conditions that edit the same records (layers, batch sizes, algorithms) are compared *paired*: one
resampling of the cases is shared by every condition, so a difference's CI reflects only how the
conditions differ on the same facts. A claim of a difference is *reproduced* when its CI excludes
zero in the paper's direction, *contradicted* when it excludes zero the other way, and
*inconclusive at this n* otherwise. A claim of near-equality ("ROME ≈ MEMIT") is reproduced when
the CI of the largest gap lies inside ±margin Score points, contradicted when it lies wholly
outside, and inconclusive otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from editscale import algorithms
from editscale.data.records import dataset_of
from editscale.data.registry import get as get_dataset
from editscale.evaluation.metrics import harmonic_mean
from editscale.settings import Findings

log = logging.getLogger(__name__)

REPRODUCED, CONTRADICTED, INCONCLUSIVE = "reproduced", "contradicted", "inconclusive at this n"
NOT_MEASURED = "not measured"  # the settings leave the claim unmeasurable; the statistic says why
COLUMNS = ["claim", "statistic", "value", "ci_low", "ci_high", "verdict", "paper", "n_cases", "detail"]


class Paired:
    """Per-case headline metrics (CounterFact: ES, PS, NS) of several conditions on the same cases,
    and one shared resampling. `efficacy` and `specificity` name the dataset's own metrics."""

    def __init__(self, cases: pd.DataFrame, condition: str, options: Findings):
        self.metrics = list(get_dataset(dataset_of(cases)).headline)
        self.efficacy, _, self.specificity = self.metrics
        wide = cases.groupby([condition, "case_id"])[self.metrics].mean()  # several algorithms per case: averaged
        self.conditions = sorted(wide.index.get_level_values(0).unique())
        shared = set.intersection(*(set(wide.loc[c].index) for c in self.conditions))
        self.case_ids = sorted(shared)
        self.values = {c: wide.loc[c].loc[self.case_ids].to_numpy(dtype=float) for c in self.conditions}
        rng = np.random.default_rng(options.seed)
        self.picks = rng.integers(0, len(self.case_ids), size=(options.n_boot, len(self.case_ids)))

    @property
    def n(self) -> int:
        return len(self.case_ids)

    def mean(self, condition, metric: str) -> tuple[float, np.ndarray]:
        """The mean of a headline metric or Score over the cases, and its bootstrap replicates."""
        values = self.values[condition]
        if metric == "Score":
            return harmonic_mean(values.mean(0)), harmonic_mean(values[self.picks].mean(1))
        column = self.metrics.index(metric)
        return values[:, column].mean(), values[self.picks, column].mean(1)


def interval(replicates: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(replicates, [2.5, 97.5])
    return float(low), float(high)


def p_best(replicates: dict) -> dict:
    """The bootstrap probability that each condition is the best: the share of resamples in which
    its replicate is the largest (ties shared), from replicates drawn on one shared resampling."""
    keys = list(replicates)
    stacked = np.stack([replicates[k] for k in keys], 1)  # (n_boot, conditions)
    top = stacked == stacked.max(1, keepdims=True)
    return dict(zip(keys, (top / top.sum(1, keepdims=True)).mean(0).tolist()))


def largest_gap(cases: pd.DataFrame, over: str, first: str, second: str, options: Findings):
    """The largest Score gap between algorithms `first` and `second` over the values of `over` (layers,
    batch sizes) both ran at, each paired over its cases: (that value, Score(first) − Score(second),
    its bootstrap replicates, the cases), or None where they share no value. Claims of near-equality
    ((a) ROME ≈ MEMIT, (d) MEMIT ≈ EMMET) read it against the margin."""
    both = set(cases[over][cases.algorithm == first]) & set(cases[over][cases.algorithm == second])
    gaps = []
    for at in sorted(both):
        pair = Paired(cases[(cases[over] == at) & cases.algorithm.isin([first, second])], "algorithm", options)
        a, b = pair.mean(first, "Score"), pair.mean(second, "Score")
        gaps.append((abs(a[0] - b[0]), at, a[0] - b[0], a[1] - b[1], pair.n))
    return max(gaps, key=lambda g: g[0])[1:] if gaps else None


def direction(low: float, high: float, expected_sign: int) -> str:
    if low > 0 or high < 0:
        return REPRODUCED if (low > 0) == (expected_sign > 0) else CONTRADICTED
    return INCONCLUSIVE


def equivalence(low: float, high: float, margin: float) -> str:
    if -margin < low and high < margin:
        return REPRODUCED
    if low > margin or high < -margin:
        return CONTRADICTED
    return INCONCLUSIVE


MIN_CASES = 20  # fewer cases than this, and a bootstrap CI is too rough to settle a claim either way


def finding(claim, statistic, value, ci, verdict, paper, n, detail=""):
    """A row of the findings table. A verdict drawn from fewer than MIN_CASES cases (a sequential
    run's last batch at small B, say) is read as inconclusive: a percentile bootstrap over a handful
    of cases undercovers, and over one case it is a point."""
    if n < MIN_CASES and verdict in (REPRODUCED, CONTRADICTED):
        verdict, detail = INCONCLUSIVE, (f"{detail}; " if detail else "") + (
            f"{n} cases, fewer than {MIN_CASES}: too few for its bootstrap CI to settle the claim")
    return dict(claim=claim, statistic=statistic, value=float(value), ci_low=ci[0], ci_high=ci[1], verdict=verdict,
                paper=paper, n_cases=int(n), detail=detail)


def layer_scores(sweep: pd.DataFrame, options: Findings) -> pd.DataFrame:
    """Each swept layer's Score (mean over the sweep's algorithms per case) with its 95% CI, and the
    bootstrap probability that it is the best layer, all on one paired resampling of the cases."""
    layers = Paired(sweep, "layer", options)
    scores = {layer: layers.mean(layer, "Score") for layer in layers.conditions}
    best = p_best({layer: replicates for layer, (_, replicates) in scores.items()})
    return pd.DataFrame([{"layer": int(layer), "Score": float(mean), "ci_low": interval(reps)[0], "ci_high": interval(reps)[1],
                          "p_best": best[layer], "n_cases": layers.n} for layer, (mean, reps) in scores.items()])


def best_layer(sweep: pd.DataFrame, n_layers: int, options: Findings) -> list[dict]:
    """(a) An early layer edits best (Llama-3: layer 1), and ROME ≈ MEMIT at every layer."""
    rows = []
    layers = Paired(sweep, "layer", options)
    scores = {layer: layers.mean(layer, "Score") for layer in layers.conditions}
    chance = p_best({layer: replicates for layer, (_, replicates) in scores.items()})
    best = max(scores, key=lambda layer: scores[layer][0])
    early = [layer for layer in layers.conditions if layer < options.early_fraction * n_layers]
    late = [layer for layer in layers.conditions if layer not in early]
    per_layer = "; ".join(f"layer {layer}: {scores[layer][0]:.1f} [{interval(scores[layer][1])[0]:.1f}, "
                          f"{interval(scores[layer][1])[1]:.1f}], P(best) {chance[layer]:.2f}" for layer in layers.conditions)
    p_early = sum(chance[layer] for layer in early)
    if early and late:
        # The best early layer against the best late one, paired over the same cases.
        top_early = max(early, key=lambda layer: scores[layer][0])
        top_late = max(late, key=lambda layer: scores[layer][0])
        diff = scores[top_early][0] - scores[top_late][0]
        ci = interval(scores[top_early][1] - scores[top_late][1])
        verdict = direction(*ci, +1)
        statistic = f"Score(best early layer {top_early}) − Score(best later layer {top_late})"
    else:
        diff, ci, verdict = scores[best][0], interval(scores[best][1]), INCONCLUSIVE
        statistic = f"Score of the best layer {best} (no {'later' if early else 'early'} layer swept to compare)"
    rows.append(finding("a. the best layer is an early one", statistic, diff, ci, verdict,
                     "layer 1 of Llama-3-8B's 32", layers.n,
                     f"best layer {best} of {n_layers} (P(best) {chance[best]:.2f}); P(the best is early, layer < "
                     f"{options.early_fraction * n_layers:g}) {p_early:.2f}; {per_layer}"))
    if {"rome", "memit"} <= set(sweep.algorithm):
        layer, gap, replicates, n = largest_gap(sweep, "layer", "rome", "memit", options)
        ci = interval(replicates)
        rows.append(finding("a. ROME ≈ MEMIT across layers", f"largest Score(ROME) − Score(MEMIT), at layer {layer}", gap,
                         ci, equivalence(*ci, options.margin), "similar at every layer", n,
                         f"margin ±{options.margin:g} Score points"))
    return rows


def batch_size_effect(batch: pd.DataFrame, options: Findings) -> list[dict]:
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


def memit_vs_emmet(batch: pd.DataFrame, options: Findings) -> list[dict]:
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


def retention(retained: pd.DataFrame, options: Findings) -> list[dict]:
    """Beyond the paper: which algorithm retains its edits best at the largest sequential n (ES of
    every edit so far, smallest B), paired against the runner-up."""
    final = retained[retained.n_edits == retained.n_edits.max()]
    final = final[final.batch_size == final.batch_size.min()]
    if final.algorithm.nunique() < 2:
        return []
    algos = Paired(final, "algorithm", options)
    eff = algos.efficacy
    es = {a: algos.mean(a, eff) for a in algos.conditions}
    ranked = sorted(es, key=lambda a: es[a][0], reverse=True)
    ci = interval(es[ranked[0]][1] - es[ranked[1]][1])
    verdict = f"{ranked[0]} retains most" if ci[0] > 0 else INCONCLUSIVE
    detail = "; ".join(f"{a}: {eff} {es[a][0]:.1f} [{interval(es[a][1])[0]:.1f}, {interval(es[a][1])[1]:.1f}]" for a in ranked)
    return [finding(f"e. retention after {int(final.n_edits.max())} sequential edits (B = {int(final.batch_size.min())})",
                 f"{eff}({ranked[0]}) − {eff}({ranked[1]})", es[ranked[0]][0] - es[ranked[1]][0], ci, verdict,
                 "(not in the paper)", algos.n, detail)]


def window_vs_layer(batch: pd.DataFrame, retained: pd.DataFrame, layer: str, window: str,
                    options: Findings) -> list[dict]:
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


@dataclass
class Runs:
    """What every claim reads: the per-case tables of each kind (sweep, batch, immediate, retained),
    at the chosen layer (`chosen`; the sweep's at every layer) and in full (`every`, windows too),
    with the model's depth, the chosen layer's and (f)'s window's path names, and the options."""
    chosen: dict
    every: dict
    n_layers: int
    layer: str
    window: str | None
    options: Findings
    missing: dict = field(default_factory=dict)  # claim letter -> why the config cannot measure it


def not_measured(claim: str, why: str) -> dict:
    """A findings row for a claim the config's settings leave unmeasurable: it says why, instead of
    the claim silently vanishing from the table."""
    return finding(claim, why, float("nan"), (float("nan"), float("nan")), NOT_MEASURED, "", 0)


def table(runs: Runs, claims: dict) -> pd.DataFrame:
    """The findings: every claim's rows ({letter: claim(runs) -> rows}), in the order of their letters."""
    rows = [row for letter in sorted(claims) for row in claims[letter](runs)]
    return pd.DataFrame(rows, columns=COLUMNS)


def verdict_at_n(verdict: str, n: int) -> str:
    """A verdict with the number of cases it was measured on: "reproduced at n = 512"."""
    if verdict == NOT_MEASURED:
        return verdict
    return verdict.replace("at this n", f"at n = {n}") if verdict == INCONCLUSIVE else f"{verdict} at n = {n}"


def markdown(table: pd.DataFrame, layers: pd.DataFrame | None = None) -> str:
    lines = ["| claim | statistic | value [95% CI] | verdict | paper | cases |", "|---|---|---|---|---|---|"]
    for row in table.itertuples(index=False):
        lines.append(f"| {row.claim} | {row.statistic} | {row.value:.2f} [{row.ci_low:.2f}, {row.ci_high:.2f}] | "
                     f"**{verdict_at_n(row.verdict, row.n_cases)}** | {row.paper} | {row.n_cases} |")
    details = [f"- {row.claim}: {row.detail}" for row in table.itertuples(index=False) if row.detail]
    lines += [""] + details if details else []
    if layers is not None and len(layers):
        lines += ["", "Each swept layer's Score (mean over the sweep's algorithms), its 95% CI and the bootstrap "
                  "probability that it is the best layer:", "", "| layer | Score [95% CI] | P(best) | cases |",
                  "|---|---|---|---|"]
        lines += [f"| {r.layer} | {r.Score:.1f} [{r.ci_low:.1f}, {r.ci_high:.1f}] | {r.p_best:.2f} | {r.n_cases} |"
                  for r in layers.itertuples(index=False)]
    return "\n".join(lines) + "\n"
