"""Batched greedy decoding with a KV cache and left padding, under per-row low-rank edits: what
the `live` protocol reads (docs/design.md, "Live decoding"; docs/fidelity.md, "Live protocol").

Prompts of similar length share a forward; every row is left-padded, so each prompt's last token
sits in the last column and one cached step extends all of them. Row i runs under its own edit
`row_edit[i]` (`scoring.per_row_edits`: x ΔWᵀ added at the edited module, never applied to the
model), at one layer or at every layer of a window. A row stops at EOS, at a token that holds a
newline, or after its own budget of new tokens; the stop token is not part of the continuation.

It equals `transformers`' `generate(do_sample=False)` token for token (tests/test_decoding.py).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from editscale.evaluation.scoring import LowRankEdits, per_row_edits
from editscale.models.hooks import cache_argument
from editscale.models.tokens import length_batches
from editscale.settings import Evaluation

EOS, NEWLINE, LENGTH = "eos", "newline", "length"  # why a row stopped


@dataclass
class Continuations:
    tokens: list  # per prompt, its greedy continuation's token ids, the stop token excluded
    stopped: list  # per prompt, why it stopped: EOS, NEWLINE or LENGTH (its budget spent)


def stop_tokens(tokenizer) -> dict:
    """{token id: EOS or NEWLINE}: the tokenizer's EOS, and every token whose text holds a line break
    (computed once per tokenizer: one decode per vocabulary entry)."""
    cached = getattr(tokenizer, "_editscale_stops", None)
    if cached is not None:
        return cached
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    stops = {i: NEWLINE for i, text in enumerate(texts) if "\n" in text or "\r" in text}
    eos = tokenizer.eos_token_id
    for i in eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else []:
        stops[i] = EOS
    tokenizer._editscale_stops = stops
    return stops


def greedy(model, tokenizer, prompts: Sequence[str], budgets: Sequence[int], *,
           batch_size: int = Evaluation.batch_size, max_tokens: int = Evaluation.max_tokens,
           edits: LowRankEdits | dict | None = None, row_edit: Sequence[int] | None = None,
           layer: int | None = None, layout=None, progress: bool = False) -> Continuations:
    """The greedy continuation of each prompt, at most `budgets[i]` new tokens, under edit
    `row_edit[i]` (−1: none) at `layer`, or at every layer of a window when `edits` maps layers to
    their LowRankEdits. Prompts that are the same text under the same edit are decoded once."""
    if len(budgets) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(budgets)} budgets: give one budget of new tokens a prompt")
    if edits is not None and (row_edit is None or (layer is None and not isinstance(edits, dict))):
        raise ValueError("decoding under edits needs row_edit (one edit index per prompt) and the edited layer")
    if layout is None:
        from editscale.models.layout import layout_for

        layout = layout_for(model)
    device = next(model.parameters()).device
    per_layer = {} if edits is None else edits if isinstance(edits, dict) else {layer: edits}
    modules = {layout.edited_module(model, at): at_edits for at, at_edits in per_layer.items()}
    row_edit = list(row_edit) if row_edit is not None else [-1] * len(prompts)
    stops = stop_tokens(tokenizer)
    # One row per distinct (prompt, edit), decoded to the largest budget asked of it: greedy decoding
    # is prefix-consistent, so a shorter budget's continuation is the longer one's first tokens.
    rows: dict = {}
    for i, (prompt, edit) in enumerate(zip(prompts, row_edit)):
        rows.setdefault((prompt, edit), []).append(i)
    keys = list(rows)
    ids = [tokenizer(prompt)["input_ids"] for prompt, _ in keys]
    budget = [max(budgets[i] for i in rows[key]) for key in keys]
    tokens: list = [None] * len(keys)
    stopped: list = [None] * len(keys)
    groups = length_batches([len(x) + b for x, b in zip(ids, budget)], max_tokens, batch_size)
    for group in tqdm(groups, desc="decoding", disable=not progress):
        with contextlib.ExitStack() as stack:
            row_edit_t = torch.as_tensor([keys[r][1] for r in group])
            for module, at_edits in modules.items():
                stack.enter_context(per_row_edits(module, at_edits, row_edit_t))
            out, why = _decode(model, [ids[r] for r in group], [budget[r] for r in group], stops,
                               tokenizer.pad_token_id, device)
        for r, t, w in zip(group, out, why):
            tokens[r], stopped[r] = t, w
    result_tokens: list = [None] * len(prompts)
    result_stopped: list = [None] * len(prompts)
    for r, key in enumerate(keys):
        for i in rows[key]:
            cut = tokens[r][: budgets[i]]
            result_tokens[i] = cut
            result_stopped[i] = stopped[r] if len(cut) == len(tokens[r]) else LENGTH
    return Continuations(result_tokens, result_stopped)


@torch.no_grad()
def _decode(model, ids: list, budgets: list, stops: dict, pad_id: int, device) -> tuple[list, list]:
    """One left-padded group: a prefill, then one cached step per new token until every row stops."""
    width = max(map(len, ids))
    input_ids = torch.tensor([[pad_id] * (width - len(x)) + x for x in ids], device=device)  # (rows, width)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=device)
    positions = (mask.cumsum(1) - 1).clamp(min=0)  # each row's own positions; padding is masked out
    cache_name = cache_argument(model)
    out = [[] for _ in ids]
    why = [None] * len(ids)
    live = torch.tensor([b > 0 for b in budgets])
    for r, b in enumerate(budgets):
        if b <= 0:
            why[r] = LENGTH
    step_ids, cache = input_ids, None
    while live.any():
        result = model(input_ids=step_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                       logits_to_keep=1, **{cache_name: cache})
        cache = result[cache_name]
        nxt = result.logits[:, -1].float().argmax(-1).cpu()  # (rows,): ties to the lowest id, as generate's
        for r in torch.nonzero(live).squeeze(1).tolist():
            token = int(nxt[r])
            if token in stops:
                why[r], live[r] = stops[token], False
                continue
            out[r].append(token)
            if len(out[r]) >= budgets[r]:
                why[r], live[r] = LENGTH, False
        step_ids = nxt[:, None].to(device)  # stopped rows keep stepping (their tokens are ignored)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        positions = positions[:, -1:] + 1
    return out, why
