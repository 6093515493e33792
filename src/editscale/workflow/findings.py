"""The findings toolkit: what every claim is measured with (paired conditions on the same cases,
seeded bootstrap 95% CIs, verdicts, the findings table and its rendering), from the per-case
tables alone (docs/design.md §3). Each experiment computes its own claims in its module
(workflow/experiments/) with these.

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

from editscale.data.records import dataset_of
from editscale.data.registry import get as get_dataset
from editscale.evaluation.bootstrap import interval, resample  # noqa: F401 (interval: part of the toolkit)
from editscale.evaluation.metrics import harmonic_mean
from editscale.settings import Findings
from editscale.workflow import text

log = logging.getLogger(__name__)

REPRODUCED, CONTRADICTED, INCONCLUSIVE = "reproduced", "contradicted", "inconclusive at this n"
NOT_MEASURED = "not measured"  # the settings leave the claim unmeasurable; the statistic says why
COLUMNS = ["protocol", "claim", "statistic", "value", "ci_low", "ci_high", "verdict", "paper", "n_cases", "detail"]


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
        self.picks = resample(len(self.case_ids), options.n_boot, options.seed)  # (n_boot, cases)

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


def table(runs: Runs, claims: dict, protocol: str = "teacher_forced") -> pd.DataFrame:
    """The findings: every claim's rows ({letter: claim(runs) -> rows}), in the order of their letters,
    each naming the protocol its tables were scored under."""
    rows = [{"protocol": protocol, **row} for letter in sorted(claims) for row in claims[letter](runs)]
    return pd.DataFrame(rows, columns=COLUMNS)


def verdict_at_n(verdict: str, n: int) -> str:
    """A verdict with the number of cases it was measured on: "reproduced at n = 512"."""
    if verdict == NOT_MEASURED:
        return verdict
    return verdict.replace("at this n", f"at n = {n}") if verdict == INCONCLUSIVE else f"{verdict} at n = {n}"


def markdown(table: pd.DataFrame, appendix: list[str] = ()) -> str:
    """The findings table, each row's detail below it, then the experiments' appendix lines."""
    lines = text.table(["protocol", "claim", "statistic", "value [95% CI]", "verdict", "paper", "cases"],
                       [[row.protocol, row.claim, row.statistic, f"{row.value:.2f} [{row.ci_low:.2f}, {row.ci_high:.2f}]",
                         f"**{verdict_at_n(row.verdict, row.n_cases)}**", row.paper, row.n_cases]
                        for row in table.itertuples(index=False)])
    details = [f"- {row.claim} ({row.protocol}): {row.detail}" for row in table.itertuples(index=False) if row.detail]
    lines += [""] + details if details else []
    lines += ["", *appendix] if appendix else []
    return "\n".join(lines) + "\n"
