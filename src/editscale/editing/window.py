"""One batch of edits spread over a window of layers, as kmeng01/memit's `execute_memit` does.

    v* is optimised once, at the window's last layer L (values on the model as it is);
    for each layer l of the window, in ascending order (i = 0, 1, …):
        K_l = keys at l on the model already edited at the window's layers below l   (d_in, n)
        R   = (v* − h_L) / (layers left, this one included)                          (d_out, n)
              h_L: the output of block L at the subject's last token of the bare prompt, now
        ΔW_l = the algorithm's solve with layer l's own C (its solver prepared once) on K_l, R
        W_l ← W_l + ΔW_l, so the layers above see it

The window's weights are restored exactly (from copies) before returning: the ΔW are returned,
never left applied. With a window of one layer this is `batches.edit_batch`: h_L is then the
output the values were optimised from, so R is their residual δ.
"""

from __future__ import annotations

from typing import Sequence

import torch

from editscale.algorithms import Prepared
from editscale.editing.batches import BatchEdit, EditConfig, apply_delta
from editscale.editing.keys import compute_keys
from editscale.editing.values import Values, compute_values
from editscale.models.hooks import block_output, forward_until
from editscale.models.tokens import pad_batch, subject_last_token


def subject_outputs(model, tokenizer, layout, layer: int, facts, *, batch_size: int = 16) -> torch.Tensor:
    """Block `layer`'s output (n, d) at the subject's last token of each fact's bare prompt: the
    residual stream v* is a target for (memit's `cur_zs`)."""
    device = next(model.parameters()).device
    block = layout.block(model, layer)
    out = []
    for start in range(0, len(facts), batch_size):
        chunk = facts[start : start + batch_size]
        located = [subject_last_token(tokenizer, fact["prompt"], fact["subject"]) for fact in chunk]
        inputs = pad_batch([ids for ids, _ in located], tokenizer.pad_token_id, device)
        seen = {}
        handle = block.register_forward_hook(lambda _m, _a, output: seen.__setitem__("h", block_output(output)))
        try:
            with torch.no_grad():
                forward_until(model, block, **inputs)
        finally:
            handle.remove()
        rows = torch.arange(len(chunk), device=device)
        out.append(seen["h"][rows, torch.tensor([i for _, i in located], device=device)].float())
    return torch.cat(out)


def edit_window(model, tokenizer, layout, cfg: EditConfig, layers: Sequence[int], facts, templates,
                solvers: dict, *, memories: dict | None = None, values: Values | None = None,
                ) -> dict[int, BatchEdit]:
    """Keys, values and each layer's ΔW for one batch of `facts` spread over `layers`, on the model as
    it is now (nothing left applied). `solvers` holds each layer's prepared solver (its own C),
    `memories` each layer's earlier keys for algorithms that keep them, and `values` the facts'
    values at the last layer on this very model (e.g. the cached unedited-model value files)."""
    layers = sorted(int(layer) for layer in layers)
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers {layers} name a layer twice")
    last = layers[-1]
    if values is None:
        values = compute_values(model, tokenizer, layout, last, facts, templates, cfg.values,
                                batch_size=cfg.value_batch_size)
    if len(values.v_star) != len(facts):
        raise ValueError(f"{len(values.v_star)} values for a batch of {len(facts)} facts")
    labels = [f.get("case_id", i) for i, f in enumerate(facts)]
    memories = memories or {}
    originals = {layer: layout.weight(model, layer).detach().clone() for layer in layers}
    edits: dict[int, BatchEdit] = {}
    try:
        for i, layer in enumerate(layers):
            K = compute_keys(model, tokenizer, layout, layer, facts, templates, batch_size=cfg.key_batch_size)
            h = subject_outputs(model, tokenizer, layout, last, facts, batch_size=cfg.key_batch_size)
            R = (values.v_star.to(h.device) - h) / (len(layers) - i)  # (n, d_out): a share of what is left
            solved = _solver(solvers, layer).solve(K.T, R.T, memory=memories.get(layer), labels=labels)
            edit = BatchEdit(solved.A, solved.B, K.T, solved.TK, solved.diagnostics)
            edit.diagnostics.update(n=len(facts), layer=layer, residual_norm=float(R.norm(dim=1).mean()),
                                    delta_norm=float(edit.delta.norm()))
            apply_delta(model, layout, layer, edit.delta)
            edits[layer] = edit
    finally:
        with torch.no_grad():
            for layer, weight in originals.items():
                layout.weight(model, layer).copy_(weight)
    for edit in edits.values():
        edit.diagnostics.update(value_loss=float(values.loss.mean()), value_steps=float(values.steps.float().mean()),
                                converged=float(values.converged.float().mean()))
    return edits


def _solver(solvers: dict, layer: int) -> Prepared:
    if layer not in solvers:
        raise KeyError(f"no prepared solver for layer {layer}; prepare one per window layer, each with its own C")
    return solvers[layer]

