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
from editscale.models.tokens import continuation_span, pad_batch


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
            out[rows] += (x[rows] @ B) @ A.T
        return out

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def length_batches(lengths: Sequence[int], batch_size: int, max_tokens: int) -> list[list[int]]:
    """Indices grouped shortest first: at most `batch_size` rows and `max_tokens` padded tokens
    a batch (a row longer than that goes alone), so a few long prompts do not pad all the rest."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if batches and len(batches[-1]) < batch_size and (len(batches[-1]) + 1) * lengths[i] <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def target_nll(model, tokenizer, layout, pairs: Sequence[tuple[str, str]], *, batch_size: int = 64,
               max_tokens: int = 2048, edits: LowRankEdits | None = None, row_edit: Sequence[int] | None = None,
               layer: int | None = None, progress: bool = False) -> torch.Tensor:
    """Mean-token NLL of each continuation after its prompt (float64 tensor, one per pair).

    With `edits`, pair i is scored under edit `row_edit[i]` (−1 for none) at `layer`.
    """
    if edits is not None and (row_edit is None or layer is None):
        raise ValueError("scoring under edits needs row_edit (one edit index per pair) and the edited layer")
    device = next(model.parameters()).device
    norm, head = layout.head(model)
    module = layout.edited_module(model, layer) if edits is not None else None
    spans = [continuation_span(tokenizer, prompt, target) for prompt, target in pairs]
    result = torch.empty(len(spans), dtype=torch.float64)
    row_edit_t = torch.as_tensor(row_edit if row_edit is not None else [-1] * len(spans))
    batches = length_batches([s.end - 1 for s in spans], batch_size, max_tokens)
    for idx in tqdm(batches, desc="scoring", disable=not progress):
        batch = [spans[i] for i in idx]
        inputs = pad_batch([s.ids[: s.end - 1] for s in batch], tokenizer.pad_token_id, device)
        rows = torch.cat([torch.full((s.end - s.start,), r) for r, s in enumerate(batch)])
        cols = torch.cat([torch.arange(s.start - 1, s.end - 1) for s in batch])
        targets = torch.cat([torch.tensor(s.target_ids) for s in batch]).to(device)
        seen = {}
        handle = norm.register_forward_hook(lambda _m, _a, out: seen.__setitem__("h", out))
        try:
            with per_row_edits(module, edits, row_edit_t[idx]):
                forward_until(model, norm, **inputs)
        finally:
            handle.remove()
        with torch.no_grad():
            logits = head(seen["h"][rows.to(device), cols.to(device)]).float()
            tok_nll = -torch.log_softmax(logits, -1).gather(1, targets[:, None]).squeeze(1).double().cpu()
        counts = torch.tensor([s.end - s.start for s in batch])
        per_pair = torch.zeros(len(batch), dtype=torch.float64).index_add_(0, rows, tok_nll) / counts
        result[torch.tensor(idx)] = per_pair
    return result
