"""Conditioning checks shared by every solver: κ before a solve, the records to blame, the fallbacks.

κ of a symmetric system comes from its eigenvalues, of any other from its singular values; κ is inf
when the smallest is ≤ 0. A float64 solve loses about log10 κ of its 16 digits, so κ ≤
max_condition (default 1e10) keeps ≥ 6. Above it, `on_ill_conditioned` decides:
  "raise"  IllConditionedError (a ValueError) naming the zero keys and the pairs of (near-)parallel
           keys, |cos| > 1 − 1e-6, by label (column index without labels), and the fix;
  "ridge"  solve (A + 1e-6·σ_max·I) X = B, so the regularised κ is ≤ 1e6 + 1;
  "pinv"   least-norm solve that drops singular values below 1e-6·σ_max.
Both fallbacks log a warning. Non-finite inputs are a ValueError naming the argument.
"""

from __future__ import annotations

import logging
import math

import torch

log = logging.getLogger("editscale.algorithms")

MODES = ("raise", "ridge", "pinv")
MAX_CONDITION = 1e10
FALLBACK_RCOND = 1e-6  # ridge size and pinv cut-off, relative to the largest singular value
PARALLEL_COSINE = 1 - 1e-6
NEAR_PARALLEL_COSINE = 0.99  # a warning, even when the system is well-conditioned: the edits will interfere
FIX = ("remove duplicate subjects from the batch (load_counterfact(unique_subjects=True); config "
       "data: unique_subjects: true) or set on_ill_conditioned: ridge or pinv in the edit config")


class IllConditionedError(ValueError):
    """A system too close to singular to solve; the message names the keys responsible and the fix."""


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"on_ill_conditioned={mode!r} is not one of {', '.join(MODES)}")


def check_finite(**tensors) -> None:
    for name, t in tensors.items():
        if t is not None and not torch.isfinite(t).all():
            raise ValueError(f"{name} has non-finite entries (NaN or Inf); check what produced it")


def check_labels(labels, n: int) -> None:
    if labels is not None and len(labels) != n:
        raise ValueError(f"got {len(labels)} labels for {n} keys")


def condition(spectrum: torch.Tensor) -> float:
    """κ from a spectrum in descending order."""
    return float(spectrum[0] / spectrum[-1]) if spectrum[-1] > 0 else math.inf


def solve(A, B, what: str, *, keys=None, symmetric: bool = True, key: str = "condition", labels=None,
          mode: str = "raise", max_condition: float = MAX_CONDITION, diagnostics=None, spectrum=None) -> torch.Tensor:
    """X with A X = B in float64, after checking κ(A). `spectrum` (descending), when the caller has it.
    A (s, s), B (s, n) -> X (s, n).

    eigvalsh and Cholesky read only A's lower triangle, so round-off asymmetry in A is harmless.
    """
    if spectrum is None:
        spectrum = torch.linalg.eigvalsh(A).flip(0) if symmetric else torch.linalg.svdvals(A)  # (s,), largest first
    kappa = condition(spectrum)
    if diagnostics is not None:
        diagnostics[key] = kappa
    if kappa <= max_condition:
        return torch.cholesky_solve(B, torch.linalg.cholesky(A)) if symmetric else torch.linalg.solve(A, B)
    return fallback(A, B, what, kappa, spectrum, keys=keys, labels=labels, mode=mode, max_condition=max_condition,
                    diagnostics=diagnostics)


def fallback(A, B, what, kappa, spectrum, *, keys, labels, mode, max_condition, diagnostics) -> torch.Tensor:
    """The answer for an ill-conditioned A X = B: an error naming the keys, or a regularised solve."""
    if mode == "raise":
        raise IllConditionedError(explain(what, kappa, max_condition, keys, labels))
    log.warning("%s has condition %.3g > max_condition %.3g; solving with %s", what, kappa, max_condition, mode)
    if diagnostics is not None:
        diagnostics["fallback"] = mode
    scale = float(spectrum.abs().max()) or 1.0  # a zero matrix still gets a ridge
    if mode == "ridge":
        return torch.linalg.solve(A + FALLBACK_RCOND * scale * torch.eye(len(A), dtype=A.dtype, device=A.device), B)
    U, S, Vh = torch.linalg.svd(A)  # (s, s), (s,), (s, s): A = U diag(S) Vh
    kept = S > FALLBACK_RCOND * scale
    return Vh[kept].T @ ((U[:, kept].T @ B) / S[kept, None])  # A⁺B: (s, r) @ (r, n)


def explain(what, kappa, max_condition, keys, labels) -> str:
    message = f"{what} is ill-conditioned (condition {kappa:.3g} > max_condition {max_condition:.3g})"
    if keys is None:  # C itself: not a batch problem
        return message + ("; C is the keys' second moment: estimate it over more tokens, or set "
                          "on_ill_conditioned: ridge or pinv in the edit config")
    culprits = degenerate_keys(keys, labels)
    if not culprits:
        return message + f"; no duplicate or zero keys, so the keys are nearly linearly dependent. Fix: {FIX}"
    shown = "; ".join(culprits[:10]) + (f"; and {len(culprits) - 10} more" if len(culprits) > 10 else "")
    return f"{message}: {shown}. Fix: {FIX}"


def degenerate_keys(K, labels, cosine_limit: float = PARALLEL_COSINE) -> list[str]:
    """Zero keys and pairs with |cos| > cosine_limit; at the default, each alone makes a Gram matrix
    of keys singular."""
    names = [str(x) for x in labels] if labels is not None else [f"column {i}" for i in range(K.shape[1])]
    norms = K.norm(dim=0)  # (n,): K is (d_in, n), a key a column
    found = [f"record {names[i]} has a zero key" for i in torch.nonzero(norms == 0).flatten().tolist()]
    unit = K / norms.clamp_min(torch.finfo(K.dtype).tiny)  # (d_in, n), unit columns
    cosine = (unit.T @ unit).abs().triu(diagonal=1)  # (n, n): |cos| of each pair, above the diagonal
    for i, j in torch.nonzero(cosine > cosine_limit).tolist():
        found.append(f"records {names[i]} and {names[j]} have duplicate or parallel keys (|cos| = {cosine[i, j]:.8f})")
    return found


def warn_near_parallel(K, labels) -> None:
    """Log the pairs of a batch whose keys are nearly parallel: whatever the conditioning, each
    edit then moves the other's output too."""
    found = degenerate_keys(K, labels, NEAR_PARALLEL_COSINE) if K.shape[1] > 1 else []
    if found:
        shown = "; ".join(found[:10]) + (f"; and {len(found) - 10} more" if len(found) > 10 else "")
        log.warning("nearly parallel keys in one batch (|cos| > %s), so these edits interfere: %s",
                    NEAR_PARALLEL_COSINE, shown)
