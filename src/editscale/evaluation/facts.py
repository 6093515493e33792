"""Score a few facts on a model, edited or not, under every protocol: the library's and the command
line's one call (`editscale.evaluate`, `python -m editscale evaluate`).

A fact is CounterFact's request with the answers it is judged on: `prompt` (with "{}" or the
subject), `subject`, `target_new`, `target_true`, and optionally `paraphrase_prompts` and
`neighborhood_prompts` (lists of filled prompts; neighbours are judged on `target_true`). A kind a
fact has no prompts of has no metric (NaN).
"""

from __future__ import annotations

import contextlib

import pandas as pd

from editscale.data.records import check_edit
from editscale.evaluation import metrics
from editscale.settings import Evaluation

LISTS = ("paraphrase_prompts", "neighborhood_prompts")


def records_of(facts) -> pd.DataFrame:
    """The facts as CounterFact records (case_id: each fact's index), each checked; errors name the fact."""
    rows = []
    for i, fact in enumerate(facts):
        def fail(field, problem, fix, i=i):
            return ValueError(f"fact {i}: '{field}' {problem}; {fix}")

        if not isinstance(fact, dict):
            raise ValueError(f"fact {i} is {type(fact).__name__}; give a mapping with prompt, subject, target_new and "
                             f"target_true")
        for field in ("prompt", "subject", "target_new", "target_true"):
            if not isinstance(fact.get(field), str) or not fact[field].strip():
                raise fail(field, "is missing or empty", "scoring judges the new target against the true one: give "
                           "both")
        prompt = check_edit(fact["subject"], fact["prompt"], fact["target_new"], fail)
        if fact["target_new"].strip() == fact["target_true"].strip():
            raise fail("target_new", "equals target_true", "an edit must change the answer")
        lists = {}
        for field in LISTS:
            items = fact.get(field, [])
            if not isinstance(items, list) or not all(isinstance(p, str) and p.strip() for p in items):
                raise fail(field, "must be a list of non-empty prompts", "give filled prompts, or leave it out")
            lists[field] = items
        rows.append(dict(case_id=i, dataset="counterfact", format="facts", subject=fact["subject"], prompt=prompt,
                         target_new=fact["target_new"].strip(), target_true=fact["target_true"].strip(),
                         relation_id=None, paraphrase_prompts=lists["paraphrase_prompts"],
                         neighborhood_prompts=lists["neighborhood_prompts"], generation_prompts=[]))
    if not rows:
        raise ValueError("no facts given; give at least one")
    return pd.DataFrame(rows)


def evaluate(model, tokenizer, facts, *, edit=None, protocols=tuple(metrics.PROTOCOLS), layout=None,
             batch_size: int = Evaluation.batch_size, progress: bool = False) -> pd.DataFrame:
    """Per fact and protocol, the metrics of every kind it has prompts of, and (live) what the model
    says after the fact's own prompt. With `edit` (an `Edit`), the edit is applied for the call and
    reverted after; without, the model is scored as it is. Unchanged (NU) reads the model against
    itself without the edit, so it is 100 when no edit is given."""
    unknown = [p for p in protocols if p not in metrics.PROTOCOLS]
    if unknown or not protocols:
        raise ValueError(f"protocols {list(protocols)}: give one or more of {', '.join(metrics.PROTOCOLS)}")
    records = records_of(facts)
    if layout is None:
        from editscale.models.layout import layout_for

        layout = layout_for(model)
    reference = metrics.score(model, tokenizer, records, layout=layout, batch_size=batch_size,
                              protocol=metrics.LIVE) if metrics.LIVE in protocols and edit is not None else None
    tables = []
    with edit.applied(model) if edit is not None else contextlib.nullcontext():
        for protocol in protocols:
            scored = metrics.score(model, tokenizer, records, layout=layout, batch_size=batch_size, protocol=protocol,
                                   progress=progress)
            cases = metrics.per_case(scored, dataset="counterfact", protocol=protocol,
                                     reference=reference if protocol == metrics.LIVE else None)
            if protocol == metrics.LIVE:
                said = scored[scored.prompt_kind == "rewrite"].set_index("case_id")["text"]
                cases["says"] = cases.case_id.map(said)
            tables.append(cases.assign(protocol=protocol))
    out = pd.concat(tables, ignore_index=True).rename(columns={"case_id": "fact"})
    out.insert(1, "subject", out.fact.map(records.subject))
    out.insert(2, "target_new", out.fact.map(records.target_new))
    return out[[c for c in ["protocol", "fact", "subject", "target_new", *_metric_columns(), "says"] if c in out]]


def totals(scored: pd.DataFrame) -> pd.DataFrame:
    """Per protocol, each metric's mean over the facts that have it, and how many do."""
    rows = []
    for protocol, part in scored.groupby("protocol", sort=False):
        for metric in _metric_columns():
            values = part[metric].dropna() if metric in part else pd.Series(dtype=float)
            if len(values):
                rows.append(dict(protocol=protocol, metric=metric, mean=float(values.mean()), n_facts=len(values)))
    return pd.DataFrame(rows)


def _metric_columns() -> list:
    from editscale.data.registry import get

    return list(get("counterfact").metrics)


def side_by_side(scored: pd.DataFrame) -> str:
    """`evaluate`'s table as the command line prints it: per fact, each metric teacher-forced (TF) and
    live side by side, and what live says; then the totals."""
    metrics_ = [m for m in ("ES", "PS", "NS", "NU") if m in scored and scored[m].notna().any()]
    wide = scored.pivot(index="fact", columns="protocol", values=metrics_)
    cells = [(m, p) for m in metrics_ for p in metrics.PROTOCOLS if (m, p) in wide]
    said = scored.dropna(subset=["says"]).set_index("fact")["says"] if "says" in scored else {}
    name = {metrics.TEACHER_FORCED: "TF", metrics.LIVE: "live"}
    lines = [f"{'fact':>4}  {'subject':24} {'target_new':16} "
             + "  ".join(f"{m + ' ' + name[p]:>9}" for m, p in cells) + "  live says"]
    for fact, row in wide.iterrows():
        first = scored[scored.fact == fact].iloc[0]
        lines.append(f"{fact:4d}  {first.subject[:24]:24} {first.target_new[:16]:16} "
                     + "  ".join(f"{row[c]:9.1f}" for c in cells) + f"  {said.get(fact, '')!r}")
    means = {(r.metric, r.protocol): r.mean for r in totals(scored).itertuples(index=False)}
    lines.append(f"{'all':>4}  {f'{len(wide)} facts':24} {'':16} "
                 + "  ".join(f"{means[c]:9.1f}" if c in means else f"{'':9}" for c in cells))
    lines.append("TF: teacher-forced (the targets' likelihoods compared); live: the model's greedy continuation "
                 "starts with the answer; NU: a neighbour's continuation unchanged by the edit (docs/fidelity.md)")
    return "\n".join(lines)
