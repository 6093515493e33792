"""NAS (SasyaTitech/NAS, `util/vstar_stats.py`, `NAS/compute_z.py`): every value rescaled to the unedited
model's typical norm before the residual is taken, so that edits cannot grow the norms that grow the
next edits.

At the value layer L, for a fact whose subject's last token (bare prompt) has block output h and MLP
output m = W_L k_bare, the value optimisation finds δ with v* = h + δ. NAS rewrites the MLP's share:

    u = m + δ                                  the MLP output the edit asks for
    u' = μ · u / (‖u‖ + ε) if ‖u‖ ≤ 2μ          rescaled to the anchor μ (ε = 1e-10)
    u' = m                 otherwise            (the fact is not edited: its residual is 0)
    v*' = (h − m) + u',    r' = v*' − h = u' − m

μ, the anchor, is a trimmed mean of ‖m + δ‖ on the unedited model: the largest 5% dropped, the rest
averaged. The reference measures it on 1000 random CounterFact rewrites with bare prompts; editscale
on the values of the run's own records on the unedited model (docs/fidelity.md, "NAS").
"""

from __future__ import annotations

import math

import torch

from editscale.editing.keys import compute_keys
from editscale.editing.values import Values

TRIM = 0.05  # the share of the largest norms the anchor leaves out (`nas` top-5% trim)
SKIP = 2.0  # a value whose MLP output is beyond SKIP·μ is not edited


def mlp_outputs(model, tokenizer, layout, layer: int, facts, *, batch_size: int = 16) -> torch.Tensor:
    """m (n, d_out): the MLP output at the subject's last token of each bare prompt, W_L k_bare."""
    k_bare = compute_keys(model, tokenizer, layout, layer, facts, ["{}"], batch_size=batch_size)  # (n, d_in)
    W = layout.weight(model, layer)  # (d_out, d_in)
    return (k_bare.to(W.device, torch.float64) @ W.double().T).float()  # (n, d_out)


def anchor(values: Values, m: torch.Tensor) -> float:
    """μ: the mean of ‖m + δ‖ over the values, the largest ⌊5%⌋ left out."""
    norms = torch.sort((m.double() + values.residual.to(m.device).double()).norm(dim=1)).values  # (n,) ascending
    kept = len(norms) - math.floor(TRIM * len(norms))
    return float(norms[:kept].mean())


def rescaled(values: Values, m: torch.Tensor, mu: float) -> Values:
    """The values with every MLP output the edit asks for rescaled to μ (or the fact left unedited)."""
    residual = values.residual.to(m.device).double()  # δ (n, d_out)
    u = m.double() + residual  # (n, d_out)
    norm = u.norm(dim=1, keepdim=True)  # (n, 1)
    u = torch.where(norm > SKIP * mu, m.double(), u * (mu / (norm + 1e-10)))  # the reference's eps
    new_residual = (u - m.double()).to(values.residual.dtype).to(values.residual.device)  # r' = u' − m
    h = values.v_star - values.residual  # the block output the values were optimised from
    return Values(h + new_residual, new_residual, values.loss, values.steps, values.converged)
