"""Metrics of any registered dataset (docs/design.md §3): the long scored table, per-case scores
and aggregates. What is scored and how a case's metrics follow is the dataset's (`data.registry`).

`score` runs the model; `per_case` and `aggregate` work on tables alone, so every
number can be recomputed from the Parquet files without the model.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from editscale.data.records import dataset_of
from editscale.data.registry import get as get_dataset
from editscale.evaluation import bootstrap, live
from editscale.evaluation.scoring import LowRankEdits, score_pairs
from editscale.settings import Evaluation, Findings

NLL_COLUMNS = ["case_id", "prompt_kind", "prompt_index", "prompt", "target", "nll"]
SCORE_COLUMNS = [*NLL_COLUMNS, "top1", "n_tokens", "argmax"]
AGGREGATE_COLUMNS = ["dataset", "format", "n_cases", "metric", "mean", "std", "ci_low", "ci_high"]

# How a prompt's answer is read, each named in every table it scores (its `protocol` column).
TEACHER_FORCED, LIVE = "teacher_forced", "live"
PROTOCOLS = {
    TEACHER_FORCED: "teacher-forced: the targets fed in, their likelihoods compared (CounterFact) or the top-1 "
                    "token read at each answer position (zsRE)",
    LIVE: "live: the model's own greedy continuation, judged on whether it starts with the answer "
          "(evaluation/live.py)",
}


def prompt_table(records: pd.DataFrame) -> pd.DataFrame:
    """One row per (case, prompt kind, prompt index, target) to score, with the continuation text."""
    return get_dataset(dataset_of(records)).prompt_table(records)


def score(model, tokenizer, records: pd.DataFrame, *, layout=None, batch_size: int = Evaluation.batch_size,
          max_tokens: int = Evaluation.max_tokens,
          edits: LowRankEdits | dict | None = None, case_edit: dict | None = None, layer: int | None = None,
          progress: bool = False, protocol: str = TEACHER_FORCED) -> pd.DataFrame:
    """The long scored table for `records` under `protocol`: teacher-forced, the NLL, top-1 accuracy
    and top-1 tokens of every row; live, every prompt's greedy continuation (`live.score`).

    With `edits`, each case is scored under its own edit `case_edit[case_id]` at `layer`, or at
    every layer of a window when `edits` maps layers to their LowRankEdits (independent edits
    evaluated together, none applied to the model).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    if layout is None:
        from editscale.models.layout import layout_for

        layout = layout_for(model)
    if protocol == LIVE:
        return live.score(model, tokenizer, records, layout=layout, batch_size=batch_size, max_tokens=max_tokens,
                          edits=edits, case_edit=case_edit, layer=layer, progress=progress)
    table = prompt_table(records)
    row_edit = None
    if edits is not None:
        row_edit = table["case_id"].map(case_edit).fillna(-1).astype(int).tolist()
    scores = score_pairs(model, tokenizer, layout, list(zip(table.prompt, table.continuation)), batch_size=batch_size,
                         max_tokens=max_tokens, edits=edits, row_edit=row_edit, layer=layer, progress=progress)
    table = table.assign(nll=scores.nll.numpy(), top1=scores.top1.numpy(), n_tokens=scores.n_tokens.numpy(),
                         argmax=scores.argmax)
    return table[SCORE_COLUMNS].astype({"case_id": "int64", "prompt_index": "int64", "nll": "float64",
                                        "top1": "float64", "n_tokens": "int64"})


def per_case(scored: pd.DataFrame, *, dataset: str = "counterfact", reference: pd.DataFrame | None = None,
             protocol: str = TEACHER_FORCED) -> pd.DataFrame:
    """The dataset's metrics per case under `protocol`, with the number of prompts of each kind (`n_<kind>`).

    `reference` is the unedited model's table of the same protocol, for metrics read against it
    (zsRE's Locality, live specificity's unchanged reading)."""
    entry = get_dataset(dataset)
    out = live.per_case(scored, dataset=dataset, reference=reference) if protocol == LIVE else \
        entry.per_case(scored, reference)
    counts = scored.groupby(["case_id", "prompt_kind"]).prompt_index.nunique().unstack("prompt_kind")
    for kind in entry.kinds:
        column = counts[kind] if kind in counts else pd.Series(0, index=counts.index)
        out[f"n_{kind}"] = out["case_id"].map(column.fillna(0)).fillna(0).astype("int64")
    return out


def harmonic_mean(values):
    """Score: the harmonic mean of the headline metrics, along the last axis (a float for one set,
    an array for many, e.g. bootstrap replicates). The one Score, and its rule for the edges:
    - NaN where any metric is NaN: a metric with no value leaves Score undefined, never 0;
    - 0 where any metric is ≤ 0 (and none is NaN): an edit that fails one side entirely scores 0."""
    values = np.asarray(values, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = values.shape[-1] / np.sum(1.0 / np.where(values > 0, values, 1.0), axis=-1)
    score = np.where((values <= 0).any(-1), 0.0, score)
    score = np.where(np.isnan(values).any(-1), np.nan, score)
    return float(score) if score.ndim == 0 else score


def aggregate(per_case_table: pd.DataFrame, *, by: list[str] | None = None, fmt: str | None = None,
              n_boot: int = Findings.n_boot, seed: int = Findings.seed) -> pd.DataFrame:
    """Mean, std and a seeded bootstrap 95% CI over cases, per metric of the table's dataset, plus
    Score (harmonic mean of its three headline metrics).

    One row per (group, metric). Every row carries the dataset, the record format and the mean
    prompts per kind. A headline metric must be defined for every case; another (zsRE's
    Portability, where a record has no such prompt) is averaged over the cases that have it.
    """
    by = list(by or [])
    entry = get_dataset(dataset_of(per_case_table))
    metric_names = [m for m in entry.metrics if m in per_case_table]
    undefined = per_case_table[per_case_table[list(entry.headline)].isna().any(axis=1)]
    if len(undefined):
        raise ValueError(f"{', '.join(entry.headline)} are undefined (NaN) for cases "
                         f"{sorted(set(undefined.case_id))[:20]}: a case needs at least one prompt of each kind; the "
                         f"loader rejects records without them, so check where these per-case rows came from")
    groups = per_case_table.groupby(by, sort=True) if by else [((), per_case_table)]
    rows = []
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        picks = bootstrap.resample(len(group), n_boot, seed)  # (n_boot, cases)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an optional metric that no case has
            boot = {m: np.nanmean(group[m].to_numpy(dtype=float)[picks], axis=1) for m in metric_names}
        common = dict(zip(by, key))
        common.update(
            dataset=entry.name,
            format=fmt if fmt is not None else (group["format"].iloc[0] if "format" in group else "unknown"),
            n_cases=len(group),
            **{f"n_{k}": float(group[f"n_{k}"].mean()) for k in entry.kinds if f"n_{k}" in group},
        )
        for metric in metric_names:
            values = group[metric].to_numpy(dtype=float)
            values = values[~np.isnan(values)]
            if not len(values):
                continue
            lo, hi = bootstrap.interval(boot[metric])
            rows.append({**common, "metric": metric, "mean": values.mean(),
                         "std": values.std(ddof=1) if len(values) > 1 else 0.0, "ci_low": lo, "ci_high": hi})
        means = [group[m].mean() for m in entry.headline]
        boot_score = [harmonic_mean(v) for v in zip(*(boot[m] for m in entry.headline))]
        lo, hi = bootstrap.interval(boot_score)
        rows.append({**common, "metric": "Score", "mean": harmonic_mean(means), "std": np.nan, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)
