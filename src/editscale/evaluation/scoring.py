"""Batched NLL scoring of (prompt, target) pairs, optionally under per-row low-rank edits.

Many prompts of many cases go through one right-padded forward, the head runs only at
the positions that are scored, and independent edits are evaluated together: row i's
edited-module output gains x_i B_e A_eᵀ for its own edit e (ΔW_e = A_e B_eᵀ), so no
edit is ever applied to the model and reverted.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from editscale.models.hooks import forward_until
from editscale.models.tokens import continuation_span, length_batches, pad_batch
from editscale.settings import Evaluation


@dataclass
class LowRankEdits:
    """Edits ΔW_e = A[e] @ B[e].T, each (d_out, d_in); ranks may differ (zero-padded)."""

    A: list[torch.Tensor]  # each (d_out, r_e)
    B: list[torch.Tensor]  # each (d_in, r_e)

    @staticmethod
    def dense(deltas: Sequence[torch.Tensor]) -> "LowRankEdits":
        """Full-rank factors of dense ΔW (A = ΔW, B = I): exact, for small layers and tests."""
        eye = torch.eye(deltas[0].shape[1], dtype=deltas[0].dtype)
        return LowRankEdits(list(deltas), [eye] * len(deltas))


@contextlib.contextmanager
def per_row_edits(module, edits: LowRankEdits | None, row_edit: torch.Tensor | None):
    """While active, row i of a forward gets edit `row_edit[i]` (−1: none) added at `module`'s output."""
    if edits is None or row_edit is None:
        yield
        return

    def hook(_module, args, output):
        x = args[0]
        out = output.clone()
        for e in torch.unique(row_edit).tolist():
            if e < 0:
                continue
            rows = torch.nonzero(row_edit == e).squeeze(1).to(x.device)
            A, B = edits.A[e].to(x.device, x.dtype), edits.B[e].to(x.device, x.dtype)
            out[rows] += (x[rows] @ B) @ A.T  # (rows, d_in) @ (d_in, n) @ (n, d_out): x ΔWᵀ, never forming ΔW
        return out

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@dataclass
class PairScores:
    """What scoring a continuation after its prompt gives, one entry per pair (teacher-forced)."""

    nll: torch.Tensor  # (pairs,) float64: mean NLL of the continuation's tokens
    top1: torch.Tensor  # (pairs,) float64: the share of its tokens that are the model's top-1 prediction
    n_tokens: torch.Tensor  # (pairs,) int64: its tokens
    argmax: list  # per pair, the model's top-1 token at each continuation position (EasyEdit's locality)


def target_nll(model, tokenizer, layout, pairs: Sequence[tuple[str, str]], **kw) -> torch.Tensor:
    """Mean-token NLL of each continuation after its prompt (float64 tensor, one per pair)."""
    return score_pairs(model, tokenizer, layout, pairs, **kw).nll


def score_pairs(model, tokenizer, layout, pairs: Sequence[tuple[str, str]], *,
                batch_size: int = Evaluation.batch_size, max_tokens: int = Evaluation.max_tokens,
                edits: LowRankEdits | dict | None = None, row_edit: Sequence[int] | None = None,
                layer: int | None = None, progress: bool = False) -> PairScores:
    """NLL, top-1 accuracy and top-1 tokens of each continuation after its prompt.

    With `edits`, pair i is scored under edit `row_edit[i]` (−1 for none) at `layer`; `edits` may
    also map each layer of a window to its LowRankEdits (edit e is then every layer's e-th).
    """
    if edits is not None and (row_edit is None or (layer is None and not isinstance(edits, dict))):
        raise ValueError("scoring under edits needs row_edit (one edit index per pair) and the edited layer")
    device = next(model.parameters()).device
    norm, head = layout.head(model)
    per_layer = {} if edits is None else edits if isinstance(edits, dict) else {layer: edits}
    modules = {layout.edited_module(model, at): at_edits for at, at_edits in per_layer.items()}
    spans = [continuation_span(tokenizer, prompt, target) for prompt, target in pairs]
    row_edit = list(row_edit) if row_edit is not None else [-1] * len(spans)
    inputs_of = shared_rows([s.ids[: s.end - 1] for s in spans], row_edit)
    nll = torch.empty(len(spans), dtype=torch.float64)
    top1 = torch.empty(len(spans), dtype=torch.float64)
    argmax: list = [None] * len(spans)
    row_edit_t = torch.as_tensor([row_edit[pairs_[0]] for pairs_ in inputs_of.values()])
    rows_ids = list(inputs_of)  # each forward row once: (token ids, edit)
    row_pairs = list(inputs_of.values())  # and the pairs it scores
    for idx in tqdm(length_batches([len(ids) for ids, _ in rows_ids], max_tokens, batch_size), desc="scoring",
                    disable=not progress):
        batch_pairs = [(r, i) for r, row in enumerate(idx) for i in row_pairs[row]]  # (row in batch, pair)
        inputs = pad_batch([list(rows_ids[row][0]) for row in idx], tokenizer.pad_token_id, device)
        rows = torch.cat([torch.full((spans[i].end - spans[i].start,), r) for r, i in batch_pairs])
        cols = torch.cat([torch.arange(spans[i].start - 1, spans[i].end - 1) for _, i in batch_pairs])
        targets = torch.cat([torch.tensor(spans[i].target_ids) for _, i in batch_pairs]).to(device)  # (scored tokens,)
        seen = {}
        handle = norm.register_forward_hook(lambda _m, _a, out: seen.__setitem__("h", out))
        try:
            with contextlib.ExitStack() as stack:
                for module, at_edits in modules.items():
                    stack.enter_context(per_row_edits(module, at_edits, row_edit_t[idx]))
                forward_until(model, norm, **inputs)
        finally:
            handle.remove()
        with torch.no_grad():
            logits = head(seen["h"][rows.to(device), cols.to(device)]).float()  # (target tokens, vocab)
            tok_nll = -torch.log_softmax(logits, -1).gather(1, targets[:, None]).squeeze(1).double().cpu()
            tok_top = logits.argmax(-1).cpu()  # ties: the lowest token id, as torch.argmax breaks them
        counts = torch.tensor([spans[i].end - spans[i].start for _, i in batch_pairs])
        owner = torch.repeat_interleave(torch.arange(len(batch_pairs)), counts)
        hits = (tok_top == targets.cpu()).double()
        which = torch.tensor([i for _, i in batch_pairs])
        nll[which] = torch.zeros(len(batch_pairs), dtype=torch.float64).index_add_(0, owner, tok_nll) / counts
        top1[which] = torch.zeros(len(batch_pairs), dtype=torch.float64).index_add_(0, owner, hits) / counts
        for (_, i), tokens in zip(batch_pairs, torch.split(tok_top, counts.tolist())):
            argmax[i] = tokens.tolist()
    n_tokens = torch.tensor([s.end - s.start for s in spans], dtype=torch.int64)
    return PairScores(nll=nll, top1=top1, n_tokens=n_tokens, argmax=argmax)


def shared_rows(inputs: Sequence[Sequence[int]], row_edit: Sequence[int]) -> dict:
    """One forward row for every pair whose input is a prefix of another's under the same edit.

    Under causal attention the logits at a row's first t positions do not depend on what follows,
    so "prompt" (a one-token target) is scored inside "prompt + other target[:-1]". CounterFact's
    new and true targets share each prompt and are mostly one token, so this about halves the
    rows. Returns {(row ids, edit): [pairs it scores]}, every pair in exactly one row."""
    order = sorted(range(len(inputs)), key=lambda i: (row_edit[i], tuple(inputs[i])), reverse=True)
    rows: dict = {}
    last = None  # in reverse lexicographic order a prefix comes right after the rows that extend it
    for i in order:
        ids, edit = tuple(inputs[i]), row_edit[i]
        if last is not None and last[1] == edit and last[0][: len(ids)] == ids:
            key = last
        else:
            key = last = (ids, edit)
            rows[key] = []
        rows[key].append(i)
    return rows
