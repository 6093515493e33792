"""Weight health of a sequential run: how far the edited matrix has moved from W₀ and how its
spectrum has changed, after every batch. ENCORE (Gupta et al. 2025) tracks the growth of ‖W‖ as
the warning sign of the collapse that long sequences of edits bring.

The spectra are exact: singular values from the eigenvalues of a Gram matrix of the smaller side
(d_out × d_out for a down projection), in float64. That is O(d_out²·d_in) per batch, a few
milliseconds on a GPU at Llama-3-8B's shape, and depends on the weights alone, so a resumed run
measures exactly what an uninterrupted one did.
"""

from __future__ import annotations

import math

import torch


def singular_values(M: torch.Tensor) -> torch.Tensor:
    """M's singular values, ascending, from the Gram matrix of its smaller side (float64)."""
    M = M.to(torch.float64)
    gram = M @ M.T if M.shape[0] <= M.shape[1] else M.T @ M  # (m, m), m = min(d_out, d_in): the smaller Gram
    return torch.linalg.eigvalsh(gram).clamp(min=0).sqrt()  # singular values of M, ascending


def weight_health(w0_norm: float, weight: torch.Tensor, total: torch.Tensor) -> dict:
    """‖ΔW_total‖_F / ‖W₀‖_F, the spectral norm of ΔW_total, ‖W‖_F and the condition number of W."""
    s_weight, s_delta = singular_values(weight), singular_values(total)
    return {"delta_relative": float(total.double().norm()) / w0_norm,
            "delta_spectral": float(s_delta[-1]),
            "weight_norm": float(weight.double().norm()),
            "weight_condition": float(s_weight[-1] / s_weight[0]) if s_weight[0] > 0 else math.inf}
