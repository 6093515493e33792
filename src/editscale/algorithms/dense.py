"""The plain path: each update as its textbook formula, one full d_in × d_in system per call.

This is what editscale solved before the prepared solvers (`algorithms.prepared`), kept as the
reference that every faster path is tested against and that `benchmarks/scale.py` times. Each
call checks κ of its d_in × d_in system from a full spectrum (`conditioning`), so a call costs
O(d_in³): fine for tests, far too slow at Llama-3's d_in = 14336.

Keys are columns, k (d_in,) or K (d_in, n); residuals r = v* − W k are r (d_out,) or R (d_out, n);
C (d_in, d_in) is the uncentred second moment E[k kᵀ]. Every solver returns ΔW (d_out, d_in) in
the dtype of K and R and on K's device, computed in float64 without forming an inverse;
`factored=True` returns (A, B) with ΔW = A Bᵀ. `diagnostics`, when given, receives "condition",
"fallback" and, for ROME and EMMET, "condition_C".
"""

from __future__ import annotations

from typing import Sequence

import torch

from .conditioning import (
    MAX_CONDITION,
    IllConditionedError,
    check_finite,
    check_labels,
    check_mode,
)
from .conditioning import solve as _solve

__all__ = ["rome", "memit", "emmet", "nullspace_projector", "alphaedit", "encore", "IllConditionedError"]


def rome(k, r, C, *, labels: Sequence | None = None, on_ill_conditioned: str = "raise",
         max_condition: float = MAX_CONDITION, diagnostics: dict | None = None, factored: bool = False):
    """ΔW = r (C⁻¹k)ᵀ / (kᵀ C⁻¹ k): the smallest change in the C-norm with (W + ΔW) k = W k + r.
    k (d_in,), r (d_out,), C (d_in, d_in) -> ΔW (d_out, d_in)."""
    opts = _options(labels, on_ill_conditioned, max_condition, diagnostics, k=k, r=r, C=C)
    k64, r64, C64 = (t.to(k.device, torch.float64) for t in (k, r, C))
    Cinv_k = _solve(C64, k64[:, None], "ROME: C", key="condition_C", **opts)  # (d_in, 1)
    kCk = k64[None] @ Cinv_k  # (1, 1); zero only for a zero key
    B = _solve(kCk, Cinv_k.T, "ROME: kᵀC⁻¹k", keys=k64[:, None], **opts).T  # (d_in, 1): ΔW = r Bᵀ
    return _finished(r64[:, None], B, torch.result_type(k, r), factored)


def memit(K, R, C, mom2_update_weight: float, *, labels: Sequence | None = None,
          on_ill_conditioned: str = "raise", max_condition: float = MAX_CONDITION,
          diagnostics: dict | None = None, factored: bool = False):
    """ΔW = R Kᵀ (λC + K Kᵀ)⁻¹, λ = mom2_update_weight: least squares on K, pulled towards 0 by λC.
    K (d_in, n) keys, R (d_out, n) residuals, C (d_in, d_in) -> ΔW (d_out, d_in)."""
    opts = _options(labels, on_ill_conditioned, max_condition, diagnostics, K=K, R=R, C=C)
    K64, R64, C64 = (t.to(K.device, torch.float64) for t in (K, R, C))
    A = mom2_update_weight * C64 + K64 @ K64.T  # (d_in, d_in)
    B = _solve(A, K64, "MEMIT: λC + KKᵀ", keys=K64, **opts)  # (d_in, n); A is symmetric: ΔW = R Bᵀ
    return _finished(R64, B, torch.result_type(K, R), factored)


def emmet(K, R, C, emmet_lambda: float, mom2_update_weight: float = 1.0, *, labels: Sequence | None = None,
          on_ill_conditioned: str = "raise", max_condition: float = MAX_CONDITION,
          diagnostics: dict | None = None, factored: bool = False):
    """ΔW = R (Kᵀ(λC)⁻¹K + εI)⁻¹ Kᵀ(λC)⁻¹ = R (KᵀC⁻¹K + λεI)⁻¹ KᵀC⁻¹, ε = emmet_lambda, λ = mom2_update_weight.

    As the reference (unified-model-editing emmet_main.py): C is scaled by λ before the solve, and
    ε is added only for a batch (n > 1), so one edit is exactly ROME. ε = 0 makes ΔW K = R exactly.
    K (d_in, n), R (d_out, n), C (d_in, d_in) -> ΔW (d_out, d_in).
    """
    opts = _options(labels, on_ill_conditioned, max_condition, diagnostics, K=K, R=R, C=C)
    K64, R64, C64 = (t.to(K.device, torch.float64) for t in (K, R, C))
    Cinv_K = _solve(C64, K64, "EMMET: C", key="condition_C", **opts)  # (d_in, n)
    ridge = mom2_update_weight * emmet_lambda if K.shape[1] > 1 else 0.0
    gram = K64.T @ Cinv_K + ridge * torch.eye(K.shape[1], dtype=torch.float64, device=K.device)  # (n, n)
    B = _solve(gram, Cinv_K.T, "EMMET: KᵀC⁻¹K + εI", keys=K64, **opts).T  # (d_in, n): ΔW = R Bᵀ
    return _finished(R64, B, torch.result_type(K, R), factored)


def nullspace_projector(C, threshold: float = 1e-2) -> torch.Tensor:
    """P = U₀U₀ᵀ (d_in, d_in), U₀ the eigenvectors of C with eigenvalue < threshold (AlphaEdit: 1e-2)."""
    check_finite(C=C)
    eigvals, U = torch.linalg.eigh(C.to(torch.float64))  # (d_in,), (d_in, d_in): C = U diag(eigvals) Uᵀ
    U0 = U[:, eigvals < threshold]  # (d_in, d_null)
    return (U0 @ U0.T).to(C.dtype)


def alphaedit(K, R, P, K_prev=None, l2: float = 1.0, *, labels: Sequence | None = None,
              on_ill_conditioned: str = "raise", max_condition: float = MAX_CONDITION,
              diagnostics: dict | None = None, factored: bool = False):
    """ΔWᵀ = solve(P (KKᵀ + K_pK_pᵀ) + αI, P K Rᵀ), α = l2: MEMIT confined to C's null space by P.

    K_prev holds the keys of earlier sequential edits (None or 0 columns for none); P comes from
    `nullspace_projector`, so ΔW leaves keys in the span of C's large eigenvectors alone.
    K (d_in, n), R (d_out, n), P (d_in, d_in), K_prev (d_in, n_prev) -> ΔW (d_out, d_in).
    """
    opts = _options(labels, on_ill_conditioned, max_condition, diagnostics, K=K, R=R, P=P, K_prev=K_prev)
    K64, R64, P64 = (t.to(K.device, torch.float64) for t in (K, R, P))
    K_all = K64 if K_prev is None else torch.cat([K64, K_prev.to(K.device, torch.float64)], dim=1)  # (d_in, n + n_prev)
    A = P64 @ (K_all @ K_all.T) + l2 * torch.eye(K.shape[0], dtype=torch.float64, device=K.device)  # (d_in, d_in)
    B = _solve(A, P64 @ K64, "AlphaEdit: P(KKᵀ + K_pK_pᵀ) + αI", keys=K64, symmetric=False, **opts)  # (d_in, n)
    return _finished(R64, B, torch.result_type(K, R), factored)


def encore(K, R, C, mom2_update_weight: float, update_norm_lambda: float, K_prev=None, *,
           labels: Sequence | None = None, on_ill_conditioned: str = "raise", max_condition: float = MAX_CONDITION,
           diagnostics: dict | None = None, factored: bool = False):
    """ΔW = R Kᵀ (λC + αI + K_pK_pᵀ + KKᵀ)⁻¹, λ = mom2_update_weight, α = update_norm_lambda (ENCORE).
    K (d_in, n), R (d_out, n), C (d_in, d_in), K_prev (d_in, n_prev) -> ΔW (d_out, d_in)."""
    opts = _options(labels, on_ill_conditioned, max_condition, diagnostics, K=K, R=R, C=C, K_prev=K_prev)
    K64, R64, C64 = (t.to(K.device, torch.float64) for t in (K, R, C))
    K_all = K64 if K_prev is None else torch.cat([K64, K_prev.to(K.device, torch.float64)], dim=1)  # (d_in, n + n_prev)
    eye = torch.eye(K.shape[0], dtype=torch.float64, device=K.device)
    A = mom2_update_weight * C64 + update_norm_lambda * eye + K_all @ K_all.T  # (d_in, d_in)
    B = _solve(A, K64, "ENCORE: λC + αI + K_pK_pᵀ + KKᵀ", keys=K64, **opts)  # (d_in, n): ΔW = R Bᵀ
    return _finished(R64, B, torch.result_type(K, R), factored)


def _options(labels, mode, max_condition, diagnostics, **tensors) -> dict:
    check_mode(mode)
    check_finite(**tensors)
    keys = tensors.get("K", tensors.get("k"))
    check_labels(labels, 1 if keys.dim() == 1 else keys.shape[1])
    if diagnostics is not None:
        diagnostics["fallback"] = None
    return dict(labels=labels, mode=mode, max_condition=max_condition, diagnostics=diagnostics)


def _finished(A, B, dtype, factored: bool):
    """ΔW = A Bᵀ (d_out, d_in) in `dtype`, or the factors A (d_out, n), B (d_in, n) themselves: rank ≤ n,
    for batched evaluation."""
    out = (A.to(dtype), B.to(dtype)) if factored else ((A @ B.T).to(dtype),)
    if not all(torch.isfinite(t).all() for t in out):  # e.g. overflow of a huge ΔW in a narrow dtype
        raise IllConditionedError(f"ΔW is not finite in {dtype}: its entries overflow; check the residuals R")
    return out if factored else out[0]
