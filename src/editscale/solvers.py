"""Closed-form updates of one MLP output projection W (d_out, d_in): DESIGN §2.

Keys are columns, k (d_in,) or K (d_in, n); residuals r = v* − W k are r (d_out,) or R (d_out, n);
C (d_in, d_in) is the uncentred second moment E[k kᵀ]. Every solver returns ΔW (d_out, d_in) in
the dtype of K and R and on K's device. The arithmetic is float64 through Cholesky, LU or SVD
solves; no inverse is ever formed.

Conditioning. Before each solve the condition number κ of the system matrix is computed in
float64 from its eigenvalues (symmetric systems) or singular values (AlphaEdit's); κ is inf when
the smallest is ≤ 0. A float64 solve loses about log10 κ of its 16 digits, so κ ≤ max_condition
(default 1e10) keeps ≥ 6. Above it, `on_ill_conditioned` decides:
  "raise"  IllConditionedError (a ValueError) naming the zero keys and the pairs of (near-)parallel
           keys, |cos| > 1 − 1e-6, by label (column index without labels), and the fix;
  "ridge"  solve (A + 1e-6·σ_max·I) X = B, so the regularised κ is ≤ 1e6 + 1;
  "pinv"   least-norm solve that drops singular values below 1e-6·σ_max.
Both fallbacks log a warning. Non-finite inputs are a ValueError naming the argument, and a
non-finite ΔW is never returned. `diagnostics`, when given, receives "condition" (κ of the solver's
main system), "fallback" (None, "ridge" or "pinv") and, for ROME and EMMET, "condition_C".

Every ΔW has the form A Bᵀ with A (d_out, n), B (d_in, n); `factored=True` returns (A, B), which
evaluates n independent edits far more cheaply than the dense (d_out, d_in) matrix.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import torch

log = logging.getLogger(__name__)

MODES = ("raise", "ridge", "pinv")
MAX_CONDITION = 1e10
FALLBACK_RCOND = 1e-6  # ridge size and pinv cut-off, relative to the largest singular value
PARALLEL_COSINE = 1 - 1e-6
FIX = ("remove duplicate subjects from the batch (load_counterfact(unique_subjects=True); config "
       "data: unique_subjects: true) or set on_ill_conditioned: ridge or pinv in the edit config")


class IllConditionedError(ValueError):
    """A system too close to singular to solve; the message names the keys responsible and the fix."""


def rome(k, r, C, *, labels: Sequence | None = None, on_ill_conditioned: str = "raise",
         max_condition: float = MAX_CONDITION, diagnostics: dict | None = None, factored: bool = False):
    """ΔW = r (C⁻¹k)ᵀ / (kᵀ C⁻¹ k): the smallest change in the C-norm with (W + ΔW) k = W k + r."""
    opts = _options(labels, on_ill_conditioned, max_condition, diagnostics, k=k, r=r, C=C)
    k64, r64, C64 = (t.to(k.device, torch.float64) for t in (k, r, C))
    Cinv_k = _solve(C64, k64[:, None], "ROME: C", key="condition_C", **opts)  # (d_in, 1)
    kCk = k64[None] @ Cinv_k  # (1, 1); zero only for a zero key
    B = _solve(kCk, Cinv_k.T, "ROME: kᵀC⁻¹k", keys=k64[:, None], **opts).T
    return _finished(r64[:, None], B, torch.result_type(k, r), factored)


def memit(K, R, C, mom2_update_weight: float, *, labels: Sequence | None = None,
          on_ill_conditioned: str = "raise", max_condition: float = MAX_CONDITION,
          diagnostics: dict | None = None, factored: bool = False):
    """ΔW = R Kᵀ (λC + K Kᵀ)⁻¹, λ = mom2_update_weight: least squares on K, pulled towards 0 by λC."""
    opts = _options(labels, on_ill_conditioned, max_condition, diagnostics, K=K, R=R, C=C)
    K64, R64, C64 = (t.to(K.device, torch.float64) for t in (K, R, C))
    A = mom2_update_weight * C64 + K64 @ K64.T
    B = _solve(A, K64, "MEMIT: λC + KKᵀ", keys=K64, **opts)  # A is symmetric: ΔW = R Bᵀ
    return _finished(R64, B, torch.result_type(K, R), factored)


def emmet(K, R, C, emmet_lambda: float, mom2_update_weight: float = 1.0, *, labels: Sequence | None = None,
          on_ill_conditioned: str = "raise", max_condition: float = MAX_CONDITION,
          diagnostics: dict | None = None, factored: bool = False):
    """ΔW = R (Kᵀ(λC)⁻¹K + εI)⁻¹ Kᵀ(λC)⁻¹ = R (KᵀC⁻¹K + λεI)⁻¹ KᵀC⁻¹, ε = emmet_lambda, λ = mom2_update_weight.

    As the reference (unified-model-editing emmet_main.py): C is scaled by λ before the solve, and
    ε is added only for a batch (n > 1), so one edit is exactly ROME. ε = 0 makes ΔW K = R exactly.
    """
    opts = _options(labels, on_ill_conditioned, max_condition, diagnostics, K=K, R=R, C=C)
    K64, R64, C64 = (t.to(K.device, torch.float64) for t in (K, R, C))
    Cinv_K = _solve(C64, K64, "EMMET: C", key="condition_C", **opts)  # (d_in, n)
    ridge = mom2_update_weight * emmet_lambda if K.shape[1] > 1 else 0.0
    gram = K64.T @ Cinv_K + ridge * torch.eye(K.shape[1], dtype=torch.float64, device=K.device)
    B = _solve(gram, Cinv_K.T, "EMMET: KᵀC⁻¹K + εI", keys=K64, **opts).T
    return _finished(R64, B, torch.result_type(K, R), factored)


def nullspace_projector(C, threshold: float = 1e-2) -> torch.Tensor:
    """P = U₀U₀ᵀ (d_in, d_in), U₀ the eigenvectors of C with eigenvalue < threshold (AlphaEdit: 1e-2)."""
    _check_finite(C=C)
    eigvals, U = torch.linalg.eigh(C.to(torch.float64))
    U0 = U[:, eigvals < threshold]
    return (U0 @ U0.T).to(C.dtype)


def alphaedit(K, R, P, K_prev=None, l2: float = 1.0, *, labels: Sequence | None = None,
              on_ill_conditioned: str = "raise", max_condition: float = MAX_CONDITION,
              diagnostics: dict | None = None, factored: bool = False):
    """ΔWᵀ = solve(P (KKᵀ + K_pK_pᵀ) + αI, P K Rᵀ), α = l2: MEMIT confined to C's null space by P.

    K_prev holds the keys of earlier sequential edits (None or 0 columns for none); P comes from
    `nullspace_projector`, so ΔW leaves keys in the span of C's large eigenvectors alone.
    """
    opts = _options(labels, on_ill_conditioned, max_condition, diagnostics, K=K, R=R, P=P, K_prev=K_prev)
    K64, R64, P64 = (t.to(K.device, torch.float64) for t in (K, R, P))
    K_all = K64 if K_prev is None else torch.cat([K64, K_prev.to(K.device, torch.float64)], dim=1)
    A = P64 @ (K_all @ K_all.T) + l2 * torch.eye(K.shape[0], dtype=torch.float64, device=K.device)
    B = _solve(A, P64 @ K64, "AlphaEdit: P(KKᵀ + K_pK_pᵀ) + αI", keys=K64, symmetric=False, **opts)
    return _finished(R64, B, torch.result_type(K, R), factored)


def _options(labels, mode, max_condition, diagnostics, **tensors) -> dict:
    if mode not in MODES:
        raise ValueError(f"on_ill_conditioned={mode!r} is not one of {', '.join(MODES)}")
    _check_finite(**tensors)
    keys = tensors.get("K", tensors.get("k"))
    n = 1 if keys.dim() == 1 else keys.shape[1]
    if labels is not None and len(labels) != n:
        raise ValueError(f"got {len(labels)} labels for {n} keys")
    if diagnostics is not None:
        diagnostics["fallback"] = None
    return dict(labels=labels, mode=mode, max_condition=max_condition, diagnostics=diagnostics)


def _check_finite(**tensors) -> None:
    for name, t in tensors.items():
        if t is not None and not torch.isfinite(t).all():
            raise ValueError(f"{name} has non-finite entries (NaN or Inf); check what produced it")


def _solve(A, B, what: str, *, keys=None, symmetric: bool = True, key: str = "condition", labels=None,
           mode: str = "raise", max_condition: float = MAX_CONDITION, diagnostics=None) -> torch.Tensor:
    """X with A X = B in float64, after checking κ(A) (see the module docstring for the modes).

    eigvalsh and Cholesky read only A's lower triangle, so round-off asymmetry in A is harmless.
    """
    spectrum = torch.linalg.eigvalsh(A).flip(0) if symmetric else torch.linalg.svdvals(A)  # descending
    condition = float(spectrum[0] / spectrum[-1]) if spectrum[-1] > 0 else math.inf
    if diagnostics is not None:
        diagnostics[key] = condition
    if condition <= max_condition:
        return torch.cholesky_solve(B, torch.linalg.cholesky(A)) if symmetric else torch.linalg.solve(A, B)
    if mode == "raise":
        raise IllConditionedError(_explain(what, condition, max_condition, keys, labels))
    log.warning("%s has condition %.3g > max_condition %.3g; solving with %s", what, condition, max_condition, mode)
    if diagnostics is not None:
        diagnostics["fallback"] = mode
    scale = float(spectrum.abs().max()) or 1.0  # a zero matrix still gets a ridge
    if mode == "ridge":
        return torch.linalg.solve(A + FALLBACK_RCOND * scale * torch.eye(len(A), dtype=A.dtype, device=A.device), B)
    U, S, Vh = torch.linalg.svd(A)
    kept = S > FALLBACK_RCOND * scale
    return Vh[kept].T @ ((U[:, kept].T @ B) / S[kept, None])


def _explain(what, condition, max_condition, keys, labels) -> str:
    message = f"{what} is ill-conditioned (condition {condition:.3g} > max_condition {max_condition:.3g})"
    if keys is None:  # C itself: not a batch problem
        return message + ("; C is the keys' second moment: estimate it over more tokens, or set "
                          "on_ill_conditioned: ridge or pinv in the edit config")
    culprits = _degenerate_keys(keys, labels)
    if not culprits:
        return message + f"; no duplicate or zero keys, so the keys are nearly linearly dependent. Fix: {FIX}"
    shown = "; ".join(culprits[:10]) + (f"; and {len(culprits) - 10} more" if len(culprits) > 10 else "")
    return f"{message}: {shown}. Fix: {FIX}"


def _degenerate_keys(K, labels) -> list[str]:
    """Zero keys and (near-)parallel pairs, each of which alone makes a Gram matrix of keys singular."""
    names = [str(x) for x in labels] if labels is not None else [f"column {i}" for i in range(K.shape[1])]
    norms = K.norm(dim=0)
    found = [f"record {names[i]} has a zero key" for i in torch.nonzero(norms == 0).flatten().tolist()]
    unit = K / norms.clamp_min(torch.finfo(K.dtype).tiny)
    cosine = (unit.T @ unit).abs().triu(diagonal=1)
    for i, j in torch.nonzero(cosine > PARALLEL_COSINE).tolist():
        found.append(f"records {names[i]} and {names[j]} have duplicate or parallel keys (|cos| = {cosine[i, j]:.8f})")
    return found


def _finished(A, B, dtype, factored: bool):
    """ΔW = A Bᵀ in `dtype`, or the factors (A, B) themselves: rank ≤ n, for batched evaluation."""
    out = (A.to(dtype), B.to(dtype)) if factored else ((A @ B.T).to(dtype),)
    if not all(torch.isfinite(t).all() for t in out):  # e.g. overflow of a huge ΔW in a narrow dtype
        raise IllConditionedError(f"ΔW is not finite in {dtype}: its entries overflow; check the residuals R")
    return out if factored else out[0]
