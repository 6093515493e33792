"""One batch of edits spread over a window of layers, as kmeng01/memit's `execute_memit` does.

    v* is optimised once, at the window's last layer L (values on the model as it is);
    for each layer l of the window, in ascending order (i = 0, 1, …):
        K_l = keys at l on the model already edited at the window's layers below l   (d_in, n)
        R   = (v* − h_L) / (layers left, this one included)                          (d_out, n)
              h_L: the output of block L at the subject's last token of the bare prompt, now
        ΔW_l = the algorithm's solve with layer l's own C (its solver prepared once) on K_l, R
        W_l ← W_l + ΔW_l, so the layers above see it

At the first layer nothing is edited yet, so h_L is the output the values were optimised from and
R is their residual δ over the window's length (read from the values, not recomputed). A window
of one layer is therefore the single-layer edit, `edit_batch`. The window's weights are restored
exactly (from copies) before returning: the ΔW are returned, never left applied.
"""

from __future__ import annotations

from typing import Sequence

import torch

from editscale.algorithms import Prepared
from editscale.editing import nas
from editscale.editing.batches import BatchEdit, EditConfig, apply_delta, restored
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
    return torch.cat(out)  # (n, d_out)


def edit_batch(model, tokenizer, layout, cfg: EditConfig, facts, templates, solver: Prepared, *,
               memory=None, known: tuple[torch.Tensor, Values] | None = None, anchor: float | None = None) -> BatchEdit:
    """Keys, values and ΔW for one batch of facts at `cfg.layer`, on the model as it is now (ΔW not
    applied): the window of that one layer.

    `memory` is the solver's sequential state for algorithms that carry one (`Prepared.memory`); `known` is (keys (n, d_in),
    Values) already computed for these facts on this very model, e.g. the cached unedited-model
    values for a sequential run's first batch.
    """
    return edit_window(model, tokenizer, layout, cfg, [cfg.layer], facts, templates, {cfg.layer: solver},
                       memories={cfg.layer: memory}, known=known, anchor=anchor)[cfg.layer]


def edit_window(model, tokenizer, layout, cfg: EditConfig, layers: Sequence[int], facts, templates,
                solvers: dict, *, memories: dict | None = None,
                known: tuple[torch.Tensor | None, Values] | None = None,
                anchor: float | None = None) -> dict[int, BatchEdit]:
    """Keys, values and each layer's ΔW for one batch of `facts` spread over `layers`, on the model as
    it is now (nothing left applied). `solvers` holds each layer's prepared solver (its own C),
    `memories` each layer's sequential state for algorithms that carry one, and `known` (keys at the
    first layer (n, d_in) or None, Values at the last) what is already computed for these facts on
    this very model, e.g. the cached unedited-model value files. `anchor`: NAS's μ, for an algorithm
    whose values are anchored (`nas`): the values are rescaled to it on the model as it is now."""
    layers = sorted(int(layer) for layer in layers)
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers {layers} name a layer twice")
    last = layers[-1]
    first_keys, values = known if known is not None else (None, None)
    if values is None:
        values = compute_values(model, tokenizer, layout, last, facts, templates, cfg.values,
                                batch_size=cfg.value_batch_size)
    if len(values.residual) != len(facts) or (first_keys is not None and len(first_keys) != len(facts)):
        raise ValueError(f"{0 if first_keys is None else len(first_keys)} known keys and {len(values.residual)} "
                         f"values for a batch of {len(facts)} facts")
    if (anchor is not None) != _solver(solvers, last).anchored:
        raise ValueError(f"{cfg.algorithm}: NAS's anchor μ is given {'but' if anchor is not None else 'and'} the "
                         f"algorithm {'does not anchor' if anchor is not None else 'anchors'} its values")
    if anchor is not None:
        values = nas.rescaled(values, nas.mlp_outputs(model, tokenizer, layout, last, facts,
                                                      batch_size=cfg.key_batch_size), anchor)
    labels = [f.get("case_id", i) for i, f in enumerate(facts)]
    memories = memories or {}
    edits: dict[int, BatchEdit] = {}
    with restored(model, layout, layers[:-1]):  # the last is never written
        for i, layer in enumerate(layers):
            solver = _solver(solvers, layer)
            if i == 0:  # the model as the values saw it: v* − h_L is their residual
                K = first_keys if first_keys is not None else compute_keys(
                    model, tokenizer, layout, layer, facts, templates, batch_size=cfg.key_batch_size)
                left = values.residual
            else:
                K = compute_keys(model, tokenizer, layout, layer, facts, templates, batch_size=cfg.key_batch_size)
                h = subject_outputs(model, tokenizer, layout, last, facts, batch_size=cfg.key_batch_size)
                left = values.v_star.to(h.device) - h
            R = left / (len(layers) - i)  # (n, d_out): this layer's share of what is left to write
            solved = solver.solve(K.T, R.T, memory=memories.get(layer), labels=labels,  # K.T (d_in, n), R.T (d_out, n)
                                  weight=layout.weight(model, layer))  # W as this batch finds it, for a restraint
            edit = BatchEdit(solved.A, solved.B, K.T, solved.TK, solved.diagnostics)
            edit.diagnostics.update(n=len(facts), residual_norm=float(R.norm(dim=1).mean()))
            if i < len(layers) - 1:  # the layers above see this one
                apply_delta(model, layout, layer, edit.delta)
            edits[layer] = edit
    for edit in edits.values():
        edit.diagnostics.update(value_loss=float(values.loss.mean()), value_steps=float(values.steps.float().mean()),
                                converged=float(values.converged.float().mean()), delta_norm=float(edit.delta.norm()))
    return edits


def _solver(solvers: dict, layer: int) -> Prepared:
    if layer not in solvers:
        raise KeyError(f"no prepared solver for layer {layer}; prepare one per window layer, each with its own C")
    return solvers[layer]

