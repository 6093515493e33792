"""The `live` protocol: edits as a user meets them. The model answers each prompt by greedy
decoding (`decoding.greedy`), and the answer is judged by what it says, not by the likelihood of a
target fed in (docs/fidelity.md, "Live protocol", against WILD's definitions).

- **Efficacy, generalisation, portability**: the continuation starts with the prompt's answer (the
  new target on rewrite and paraphrase prompts), as whole words after WILD's normalisation.
- **Specificity, two readings**: *kept*, a neighbourhood continuation still starts with its true
  answer; *unchanged*, it equals the unedited model's own continuation token for token (EasyEdit's
  and WILD's locality on generated tokens).

Decoding stops at EOS or a line break, or after the answer's own tokens plus `MARGIN`. There is no
LLM judge offline; WILD falls back to the same exact match without one.
"""

from __future__ import annotations

import re
import string

import numpy as np
import pandas as pd

from editscale.data.records import dataset_of
from editscale.data.registry import get as get_dataset
from editscale.evaluation import decoding
from editscale.evaluation.scoring import LowRankEdits
from editscale.models.tokens import continuation_span
from editscale.settings import Evaluation

# New tokens beyond the answer's own: one for the model spelling the answer in more tokens than the
# reference tokenisation does, one for a leading article (normalised away, as WILD's), and one to see
# where the answer's last word ends (" Paris" then "ian" is not "Paris").
MARGIN = 3
COLUMNS = ["case_id", "prompt_kind", "prompt_index", "prompt", "target", "answer", "tokens", "text", "stopped", "hit"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalise(text: str) -> str:
    """WILD's `normalize_answer` (SQuAD's): lower case, punctuation removed, articles a/an/the
    removed, whitespace collapsed, in that order."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def starts_with(continuation: str, answer: str) -> bool:
    """Whether the continuation's first words are the answer's, after `normalise`. WILD asks for the
    whole of a continuation cut at its first "." to equal the answer; a budget of the answer plus
    `MARGIN` tokens makes the prefix the same question (docs/fidelity.md)."""
    said, wanted = normalise(continuation), normalise(answer)
    if not wanted:  # an answer of punctuation or articles alone: compared as written, trimmed
        said, wanted = continuation.strip().lower(), answer.strip().lower()
    return bool(wanted) and (said == wanted or said.startswith(wanted + " "))


def prompt_table(records: pd.DataFrame) -> pd.DataFrame:
    """Every prompt once, with the answer its continuation is judged on (`Dataset.live_target`: the new
    target on rewrite and paraphrase prompts, the true one on neighbours; zsRE: each prompt's own)."""
    entry = get_dataset(dataset_of(records))
    table = entry.prompt_table(records)
    judged = table["target"] == table["prompt_kind"].map(entry.live_target)
    return table[judged].reset_index(drop=True)


def score(model, tokenizer, records: pd.DataFrame, *, layout=None, batch_size: int = Evaluation.batch_size,
          max_tokens: int = Evaluation.max_tokens, edits: LowRankEdits | dict | None = None,
          case_edit: dict | None = None, layer: int | None = None, progress: bool = False) -> pd.DataFrame:
    """The long live table for `records`: each prompt's greedy continuation (token ids and text), why it
    stopped, and whether it starts with the prompt's answer; under each case's own edit as `metrics.score`."""
    table = prompt_table(records)
    spans = [continuation_span(tokenizer, p, c) for p, c in zip(table.prompt, table.continuation)]
    budgets = [s.end - s.start + MARGIN for s in spans]
    row_edit = None
    if edits is not None:
        row_edit = table["case_id"].map(case_edit).fillna(-1).astype(int).tolist()
    said = decoding.greedy(model, tokenizer, list(table.prompt), budgets, batch_size=batch_size,
                           max_tokens=max_tokens, edits=edits, row_edit=row_edit, layer=layer, layout=layout,
                           progress=progress)
    texts = tokenizer.batch_decode(said.tokens, skip_special_tokens=True)
    answers = table["continuation"].str.strip()
    table = table.assign(answer=answers, tokens=said.tokens, text=texts, stopped=said.stopped,
                         hit=[starts_with(t, a) for t, a in zip(texts, answers)])
    return table[COLUMNS].astype({"case_id": "int64", "prompt_index": "int64", "hit": "bool"})


def per_case(scored: pd.DataFrame, *, dataset: str, reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per case, ×100: each kind's share of continuations that start with their answer (under the
    dataset's metric for that kind), and the unchanged reading of specificity: the share of
    neighbourhood continuations equal to the unedited model's (`reference`, the baseline's live
    table; without one, the table is its own reference: 100)."""
    entry = get_dataset(dataset)
    hits = (100 * scored.groupby(["case_id", "prompt_kind"])["hit"].mean()).unstack("prompt_kind")
    out = pd.DataFrame(index=hits.index)
    for kind, name in entry.by_kind.items():
        out[name] = hits[kind] if kind in hits else np.nan
    neighbours = scored[scored.prompt_kind == "neighborhood"]
    ref = neighbours if reference is None else reference[reference.prompt_kind == "neighborhood"]
    keys = ["case_id", "prompt_index"]
    both = neighbours[[*keys, "tokens"]].merge(ref[[*keys, "tokens"]], on=keys, how="left", suffixes=("", "_ref"))
    if both["tokens_ref"].isna().any():
        missing = sorted(set(both.loc[both["tokens_ref"].isna(), "case_id"]))[:10]
        raise ValueError(f"the reference live table has no unedited continuations for cases {missing}; decode the "
                         f"baseline on the same records")
    same = [list(a) == list(b) for a, b in zip(both["tokens"], both["tokens_ref"])]
    out[entry.unchanged] = 100 * both.assign(same=same).groupby("case_id")["same"].mean()
    return out[[m for m in entry.metrics if m in out]].reset_index()
