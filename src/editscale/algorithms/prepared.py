"""Prepared solvers: what depends only on C is done once, every edit after it costs O(d_in²·n + s³).

Every algorithm in the registry solves one family (docs/design.md §2):

    ΔW = R Bᵀ,   B = T U (Uᵀ T U + ρI)⁻¹ E,   U = [K, K_p],

with K (d_in, n) the batch's keys, K_p (d_in, m) the keys of earlier batches for the algorithms
that keep them (m = 0 otherwise), E = [I_n; 0] the batch's columns, T a symmetric operator on
keys and ρ ≥ 0 a ridge. By the push-through identity (ρI + TUUᵀ)⁻¹TU = TU(ρI + UᵀTU)⁻¹, B also
equals (ρI + T UUᵀ)⁻¹ T K, the d_in × d_in form each paper writes:

  ROME       T = C⁻¹             ρ = 0       B = C⁻¹k / kᵀC⁻¹k                (n = 1)
  EMMET      T = C⁻¹             ρ = λε      B = C⁻¹K (KᵀC⁻¹K + λεI)⁻¹         (ε only for n > 1)
  MEMIT      T = C⁻¹             ρ = λ       B = (λC + KKᵀ)⁻¹ K                (Woodbury)
  AlphaEdit  T = P               ρ = α       B = (P(KKᵀ + K_pK_pᵀ) + αI)⁻¹ P K
  ENCORE     T = (C + α/λ·I)⁻¹   ρ = λ       B = (λC + αI + K_pK_pᵀ + KKᵀ)⁻¹ K

`prepare` does the O(d_in³) part once per (C, settings): a Cholesky factor of C (its κ checked
once, from its spectrum) or AlphaEdit's projector P. `Prepared.solve` then applies T to the keys
(O(d_in²·n)) and solves the small symmetric system of size s = n + m (O(s³)) after checking its
κ. K_p enters through a `KeyMemory` that holds T K_p and K_pᵀ T K_p and grows one batch at a time,
so a sequential run never re-applies T to earlier keys.

Conditioning and the `on_ill_conditioned` modes are as in `conditioning`; diagnostics carry
"condition" (the small system's κ: exact up to EXACT_CONDITION_SIZE rows or when ρ = 0, above it
the bound 1 + tr(UᵀTU)/ρ), "condition_C", "fallback" and "fallback_C".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .conditioning import (
    FALLBACK_RCOND,
    MAX_CONDITION,
    IllConditionedError,
    check_finite,
    check_labels,
    check_mode,
    condition,
    explain,
    log,
    warn_near_parallel,
)
from .conditioning import solve as checked_solve

EXACT_CONDITION_SIZE = 2048  # above this, a system with a positive ridge gets a cheap bound on κ


class InverseOfC:
    """T = (C + shift·I)⁻¹, applied through a Cholesky factor made once; κ(C + shift·I) checked once."""

    def __init__(self, C: torch.Tensor, shift: float = 0.0, *, mode: str, max_condition: float):
        self.device = C.device
        A = C.to(torch.float64) + shift * torch.eye(len(C), dtype=torch.float64, device=C.device)  # (d_in, d_in)
        spectrum = torch.linalg.eigvalsh(A).flip(0)  # (d_in,), largest first
        self.condition, self.fallback = condition(spectrum), None
        self._factor = self._pinv = None
        if self.condition <= max_condition:
            self._factor = torch.linalg.cholesky(A)  # (d_in, d_in) lower: A = L Lᵀ
            return
        what = "C" if shift == 0 else f"C + {shift:g}·I"
        if mode == "raise":
            raise IllConditionedError(explain(what, self.condition, max_condition, None, None))
        log.warning("%s has condition %.3g > max_condition %.3g; solving with %s", what, self.condition,
                    max_condition, mode)
        self.fallback = mode
        scale = float(spectrum.abs().max()) or 1.0
        if mode == "ridge":
            self._factor = torch.linalg.cholesky(A + FALLBACK_RCOND * scale * torch.eye(len(A), dtype=A.dtype,
                                                                                          device=A.device))
        else:
            eigvals, U = torch.linalg.eigh(A)  # (d_in,), (d_in, d_in)
            kept = eigvals > FALLBACK_RCOND * scale
            self._pinv = (U[:, kept], eigvals[kept])  # (d_in, r), (r,): A⁺ = U diag(1/s) Uᵀ

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        """T X for X (d_in, n) -> (d_in, n)."""
        if self._factor is not None:
            return torch.cholesky_solve(X, self._factor)
        U, s = self._pinv
        return U @ ((U.T @ X) / s[:, None])  # (d_in, r) @ (r, n)


class NullSpaceProjector:
    """T = P = U₀U₀ᵀ, U₀ the eigenvectors of C with eigenvalue < threshold (AlphaEdit; 1e-2 or 2e-2)."""

    def __init__(self, C: torch.Tensor, threshold: float):
        self.device = C.device
        eigvals, U = torch.linalg.eigh(C.to(torch.float64))  # (d_in,), (d_in, d_in)
        self.basis = U[:, eigvals < threshold]  # U₀ (d_in, r)
        self.condition, self.fallback = condition(eigvals.flip(0)), None
        # P X as U₀(U₀ᵀX) costs 2·d·r per column; the dense P, d² per column, is cheaper once r > d/2.
        self._dense = self.basis @ self.basis.T if self.basis.shape[1] > len(C) // 2 else None

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        """P X for X (d_in, n) -> (d_in, n)."""
        return self._dense @ X if self._dense is not None else self.basis @ (self.basis.T @ X)


@dataclass
class KeyMemory:
    """Keys of earlier batches K_p (d_in, m), with T K_p and K_pᵀ T K_p grown one batch at a time.

    The same batches absorbed in the same order give the same bits, so a resumed run rebuilds it
    exactly by absorbing its stored batches again.
    """

    K: torch.Tensor | None = None
    TK: torch.Tensor | None = None
    gram: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return 0 if self.K is None else self.K.shape[1]

    def absorb(self, K: torch.Tensor, TK: torch.Tensor) -> None:
        K = K.to(TK.device, torch.float64).contiguous()  # as stored and reloaded: the same bits on replay
        if self.K is None:
            self.K, self.TK, self.gram = K, TK, K.T @ TK  # (d_in, n), (d_in, n), (n, n)
            return
        cross = self.K.T @ TK  # K_pᵀ T K, (m, n)
        self.gram = torch.cat([torch.cat([self.gram, cross], 1), torch.cat([cross.T, K.T @ TK], 1)], 0)  # (m+n, m+n)
        self.K, self.TK = torch.cat([self.K, K], 1), torch.cat([self.TK, TK], 1)  # (d_in, m + n) each


@dataclass
class Solved:
    A: torch.Tensor  # (d_out, n): ΔW = A Bᵀ
    B: torch.Tensor  # (d_in, n)
    TK: torch.Tensor  # T K in float64, for KeyMemory.absorb
    diagnostics: dict = field(default_factory=dict)


@dataclass
class Prepared:
    """An algorithm with its C-dependent work done; `solve` edits one batch."""

    name: str
    system: str  # the small system, for messages
    T: Callable[[torch.Tensor], torch.Tensor]
    ridge: Callable[[int], float]
    max_batch: int | None
    mode: str
    max_condition: float

    def transform(self, K: torch.Tensor) -> torch.Tensor:
        """T K in float64 on C's device: the O(d_in²·n) part, shareable between batches of one call."""
        return self.T(K.to(self.T.device, torch.float64))

    def solve(self, K: torch.Tensor, R: torch.Tensor, *, memory: KeyMemory | None = None,
              labels: Sequence | None = None, TK: torch.Tensor | None = None) -> Solved:
        """The factors of ΔW for keys K (d_in, n) and residuals R (d_out, n), in K and R's dtype."""
        check_finite(K=K, R=R)
        n = K.shape[1]
        check_labels(labels, n)
        if self.max_batch is not None and n > self.max_batch:
            raise ValueError(f"{self.name} edits {self.max_batch} fact at a time; got a batch of {n}")
        device = self.T.device
        K64, R64 = K.to(device, torch.float64).contiguous(), R.to(device, torch.float64)
        warn_near_parallel(K64, labels)
        TK = self.transform(K64) if TK is None else TK  # (d_in, n)
        diagnostics = {"fallback": None, "condition_C": self.T.condition, "fallback_C": self.T.fallback}
        rho = float(self.ridge(n))
        if memory is None or memory.size == 0:
            M = K64.T @ TK  # (n, n)
            B = self._small(M, TK.T, rho, K64, labels, diagnostics).T  # (d_in, n): B = T K (M + ρI)⁻¹
        else:
            cross = memory.K.T @ TK  # (m, n)
            M = torch.cat([torch.cat([K64.T @ TK, cross.T], 1), torch.cat([cross, memory.gram], 1)], 0)  # (n+m, n+m)
            E = torch.zeros(len(M), n, dtype=torch.float64, device=device)  # (n + m, n): the first n columns of I
            E[:n] = torch.eye(n, dtype=torch.float64, device=device)
            everyone = None if labels is None else [*labels, *(f"earlier-batch key {j}" for j in range(memory.size))]
            X = self._small(M, E, rho, torch.cat([K64, memory.K], 1), everyone, diagnostics)  # (n + m, n)
            B = TK @ X[:n] + memory.TK @ X[n:]  # (d_in, n)
        dtype = torch.result_type(K, R)
        A, B = R64.to(dtype), B.to(dtype)  # (d_out, n), (d_in, n): ΔW = A Bᵀ
        if not (torch.isfinite(A).all() and torch.isfinite(B).all()):
            raise IllConditionedError(f"ΔW is not finite in {dtype}: its entries overflow; check the residuals R")
        return Solved(A, B, TK, diagnostics)

    def _small(self, M, rhs, rho, keys, labels, diagnostics):
        """X with (M + ρI) X = rhs, M = UᵀTU symmetric positive semi-definite, after checking κ."""
        M = (M + M.T) / 2 + rho * torch.eye(len(M), dtype=M.dtype, device=M.device)  # (s, s), symmetrised
        spectrum = None
        if rho > 0 and len(M) > EXACT_CONDITION_SIZE:  # λ_min ≥ ρ, λ_max ≤ ρ + tr(UᵀTU)
            spectrum = torch.stack([M.diagonal().sum() - (len(M) - 1) * rho, M.new_tensor(rho)])
        return checked_solve(M, rhs, self.system, keys=keys, labels=labels, mode=self.mode,
                             max_condition=self.max_condition, diagnostics=diagnostics, spectrum=spectrum)


def prepare(algorithm, C: torch.Tensor, settings: dict, *, on_ill_conditioned: str = "raise",
            max_condition: float = MAX_CONDITION, operator=None) -> Prepared:
    """`algorithm` (a registry entry) with its O(d_in³) work on C done, on C's device.

    `operator`: a T already built from this C by an algorithm with the same operator (ROME, MEMIT
    and EMMET share C⁻¹), to skip the O(d_in³) work.
    """
    check_mode(on_ill_conditioned)
    check_finite(C=C)
    T = operator or algorithm.operator(C, settings, mode=on_ill_conditioned, max_condition=max_condition)
    return Prepared(algorithm.name, algorithm.system, T, lambda n: algorithm.ridge(settings, n), algorithm.max_batch,
                    on_ill_conditioned, max_condition)
