"""CounterFact metrics (docs/design.md §3): the long NLL table, per-case scores and aggregates.

`score` runs the model; `per_case` and `aggregate` work on tables alone, so every
number can be recomputed from the Parquet files without the model.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from editscale.evaluation.scoring import LowRankEdits, target_nll
from editscale.models.tokens import fill
from editscale.settings import Evaluation, Findings

KINDS = ("rewrite", "paraphrase", "neighborhood")
NLL_COLUMNS = ["case_id", "prompt_kind", "prompt_index", "prompt", "target", "nll"]
METRICS = ("ES", "PS", "NS", "EM", "PM", "NM")
AGGREGATE_COLUMNS = ["format", "n_cases", *(f"n_{k}" for k in KINDS), "metric", "mean", "std", "ci_low", "ci_high"]


def prompt_table(records: pd.DataFrame) -> pd.DataFrame:
    """One row per (case, prompt kind, prompt index, target) to score, with the continuation text."""
    rows = []
    for rec in records.itertuples(index=False):
        prompts = {
            "rewrite": [fill(rec.prompt, rec.subject)[0]],
            "paraphrase": list(rec.paraphrase_prompts),
            "neighborhood": list(rec.neighborhood_prompts),
        }
        for kind in KINDS:
            for index, prompt in enumerate(prompts[kind]):
                for target, text in (("new", rec.target_new), ("true", rec.target_true)):
                    rows.append((rec.case_id, kind, index, prompt, target, " " + text))
    return pd.DataFrame(rows, columns=["case_id", "prompt_kind", "prompt_index", "prompt", "target", "continuation"])


def score(model, tokenizer, records: pd.DataFrame, *, layout=None, batch_size: int = Evaluation.batch_size,
          max_tokens: int = Evaluation.max_tokens,
          edits: LowRankEdits | None = None, case_edit: dict | None = None, layer: int | None = None,
          progress: bool = False) -> pd.DataFrame:
    """The long NLL table for `records`.

    With `edits`, each case is scored under its own edit `case_edit[case_id]` at `layer`
    (independent edits evaluated together, none applied to the model).
    """
    if layout is None:
        from editscale.models.layout import layout_for

        layout = layout_for(model)
    table = prompt_table(records)
    row_edit = None
    if edits is not None:
        row_edit = table["case_id"].map(case_edit).fillna(-1).astype(int).tolist()
    table["nll"] = target_nll(model, tokenizer, layout, list(zip(table.prompt, table.continuation)),
                              batch_size=batch_size, max_tokens=max_tokens, edits=edits, row_edit=row_edit, layer=layer,
                              progress=progress).numpy()
    return table[NLL_COLUMNS].astype({"case_id": "int64", "prompt_index": "int64", "nll": "float64"})


def per_case(nll_table: pd.DataFrame) -> pd.DataFrame:
    """ES, PS, NS (fractions ×100) and their magnitudes EM, PM, NM (probability gaps ×100) per case."""
    wide = nll_table.pivot_table(index=["case_id", "prompt_kind", "prompt_index"], columns="target",
                                 values="nll", aggfunc="first").reset_index()
    p_new, p_true = np.exp(-wide["new"]), np.exp(-wide["true"])
    neighbour = wide["prompt_kind"] == "neighborhood"
    # Success: the new target is likelier on rewrite/paraphrase prompts, the true one on neighbours.
    wide["success"] = np.where(neighbour, wide["true"] < wide["new"], wide["new"] < wide["true"]).astype(float)
    wide["magnitude"] = np.where(neighbour, p_true - p_new, p_new - p_true)
    grouped = wide.groupby(["case_id", "prompt_kind"])[["success", "magnitude"]].mean().unstack("prompt_kind")
    out = pd.DataFrame(index=grouped.index)
    for kind, s, m in zip(KINDS, ("ES", "PS", "NS"), ("EM", "PM", "NM")):
        out[s] = 100 * grouped["success"].get(kind, np.nan)
        out[m] = 100 * grouped["magnitude"].get(kind, np.nan)
    counts = wide.groupby(["case_id", "prompt_kind"]).size().unstack("prompt_kind")
    for kind in KINDS:
        out[f"n_{kind}"] = counts.get(kind, pd.Series(0, index=counts.index)).fillna(0).astype("int64")
    return out.reset_index()


def harmonic_mean(values) -> float:
    values = np.asarray(values, dtype=float)
    if np.isnan(values).any():
        return float("nan")
    if (values <= 0).any():
        return 0.0
    return float(len(values) / np.sum(1.0 / values))


def aggregate(per_case_table: pd.DataFrame, *, by: list[str] | None = None, fmt: str | None = None,
              n_boot: int = Findings.n_boot, seed: int = Findings.seed) -> pd.DataFrame:
    """Mean, std and a seeded bootstrap 95% CI over cases, per metric, plus Score (harmonic mean of ES, PS, NS).

    One row per (group, metric). Every row carries the record format and prompts per kind.
    """
    by = list(by or [])
    undefined = per_case_table[per_case_table[list(METRICS)].isna().any(axis=1)]
    if len(undefined):
        raise ValueError(f"metrics are undefined (NaN) for cases {sorted(set(undefined.case_id))[:20]}: a case needs "
                         f"at least one prompt of each kind; the loader rejects records without them, so check "
                         f"where these per-case rows came from")
    groups = per_case_table.groupby(by, sort=True) if by else [((), per_case_table)]
    rows = []
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        rng = np.random.default_rng(seed)
        picks = rng.integers(0, len(group), size=(n_boot, len(group)))
        boot = {m: group[m].to_numpy()[picks].mean(axis=1) for m in METRICS}
        common = dict(zip(by, key))
        common.update(
            format=fmt if fmt is not None else (group["format"].iloc[0] if "format" in group else "unknown"),
            n_cases=len(group),
            **{f"n_{k}": float(group[f"n_{k}"].mean()) for k in KINDS},
        )
        for metric in METRICS:
            values = group[metric].to_numpy(dtype=float)
            lo, hi = np.nanpercentile(boot[metric], [2.5, 97.5])
            rows.append({**common, "metric": metric, "mean": values.mean(), "std": values.std(ddof=1) if len(values) > 1 else 0.0,
                         "ci_low": lo, "ci_high": hi})
        means = [group[m].mean() for m in ("ES", "PS", "NS")]
        boot_score = [harmonic_mean(v) for v in zip(boot["ES"], boot["PS"], boot["NS"])]
        lo, hi = np.nanpercentile(boot_score, [2.5, 97.5])
        rows.append({**common, "metric": "Score", "mean": harmonic_mean(means), "std": np.nan, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)
