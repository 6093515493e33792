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
  MEMIT_seq  T = C⁻¹             ρ = λ       B = (λC + K_pK_pᵀ + KKᵀ)⁻¹ K
  RLSEdit    T = T_{t-1}         ρ = 1       B = T_t K, T_t = (λC + Σ_{s≤t} K_sK_sᵀ)⁻¹ (`RunningInverse`)
  EvoEdit    T = P_t             ρ = α       B = P_t K (KᵀP_tK + αI)⁻¹ (`ShrinkingProjector`)
  SPHERE     AlphaEdit's, then a restraint on B (`restraints.sphere`)

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
        self.device, self.dim = C.device, len(C)
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
    """Keys of earlier batches K_p (d_in, m), with T K_p and K_pᵀ T K_p grown one batch at a time:
    they join each later batch's small system (AlphaEdit, ENCORE, MEMIT_seq, SPHERE).

    The same batches absorbed in the same order give the same bits, so a resumed run rebuilds it
    exactly by absorbing its stored batches again. `T`: the solver's operator, to absorb keys
    without their T K (a resume).
    """

    K: torch.Tensor | None = None
    TK: torch.Tensor | None = None
    gram: torch.Tensor | None = None
    T: Callable | None = None

    @property
    def size(self) -> int:
        return 0 if self.K is None else self.K.shape[1]

    def absorb(self, K: torch.Tensor, TK: torch.Tensor | None = None) -> None:
        K = _as_stored(K, self.T.device if TK is None else TK.device)
        TK = self.T(K) if TK is None else TK  # (d_in, n)
        if self.K is None:
            self.K, self.TK, self.gram = K, TK, K.T @ TK  # (d_in, n), (d_in, n), (n, n)
            return
        cross = self.K.T @ TK  # K_pᵀ T K, (m, n)
        self.gram = torch.cat([torch.cat([self.gram, cross], 1), torch.cat([cross.T, K.T @ TK], 1)], 0)  # (m+n, m+n)
        self.K, self.TK = torch.cat([self.K, K], 1), torch.cat([self.TK, TK], 1)  # (d_in, m + n) each


def _as_stored(K: torch.Tensor, device) -> torch.Tensor:
    """Keys in float64 as a run stores and reloads them: the same bits in a run and on its replay."""
    return K.to(device, torch.float64).contiguous()


class _DenseState:
    """A sequential state that is T itself, kept as a dense (d_in, d_in) `matrix` and changed by `absorb`:
    a solver using it asks it for T instead of its own (`replaces_operator`)."""

    replaces_operator = True

    def __init__(self, matrix: torch.Tensor, initial):
        self.matrix = matrix  # (d_in, d_in)
        self.device, self.condition, self.fallback, self.size = initial.device, initial.condition, initial.fallback, 0

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        return self.matrix @ X  # (d_in, d_in) @ (d_in, n)


class RunningInverse(_DenseState):
    """RLSEdit's state: T_t = (λC + Σ_{s≤t} K_sK_sᵀ)⁻¹ (d_in, d_in), kept dense and downdated by
    Woodbury after each batch, so a batch costs O(d_in²·n) however many came before:

        F = T_{t-1} K,   T_t = T_{t-1} − F (I + Kᵀ F)⁻¹ Fᵀ.

    A batch's B = T_t K = F (I + KᵀF)⁻¹ is the family's solve with T = T_{t-1} and ρ = 1.
    """

    def __init__(self, initial: Callable):
        inverse = initial(torch.eye(initial.dim, dtype=torch.float64, device=initial.device))  # T_0 = (λC)⁻¹
        super().__init__((inverse + inverse.T) / 2, initial)

    def absorb(self, K: torch.Tensor, TK: torch.Tensor | None = None) -> None:
        K = _as_stored(K, self.device)
        F = self(K) if TK is None else TK  # (d_in, n)
        S = K.T @ F + torch.eye(K.shape[1], dtype=torch.float64, device=self.device)  # (n, n)
        S = (S + S.T) / 2
        inverse = self.matrix - F @ torch.linalg.solve(S, F.T)  # (d_in, d_in)
        self.matrix = (inverse + inverse.T) / 2
        self.size += K.shape[1]


class ShrinkingProjector(_DenseState):
    """EvoEdit's state: the projector P_t onto what is left of C's null space once the edited keys'
    directions are taken out, so later batches leave earlier keys' outputs alone:

        P_t = P_{t-1} − Q Qᵀ,   Q an orthonormal basis of range(P_{t-1} K)   (= P − PK(KᵀPK)⁺KᵀP)

    kept dense (d_in, d_in), as the reference keeps it: a batch costs O(d_in²·n). Q comes from the thin
    SVD of P K, its rank counted as the reference counts it (σ > max(d_in, n)·eps·σ_max, at least 1e-10).
    """

    def __init__(self, initial: NullSpaceProjector):
        super().__init__(initial.basis @ initial.basis.T, initial)  # P₀ = U₀U₀ᵀ

    def absorb(self, K: torch.Tensor, TK: torch.Tensor | None = None) -> None:
        K = _as_stored(K, self.device)
        PK = self(K) if TK is None else TK  # (d_in, n)
        U, s, _ = torch.linalg.svd(PK, full_matrices=False)  # U (d_in, n)
        tolerance = max(max(PK.shape) * torch.finfo(s.dtype).eps * float(s.max()), 1e-10) if len(s) else 0.0
        Q = U[:, s > tolerance]  # (d_in, rank)
        self.matrix = self.matrix - Q @ Q.T
        self.size += K.shape[1]


@dataclass
class Solved:
    A: torch.Tensor  # (d_out, n): ΔW = A Bᵀ
    B: torch.Tensor  # (d_in, n)
    TK: torch.Tensor  # T K in float64, for KeyMemory.absorb
    diagnostics: dict = field(default_factory=dict)


@dataclass
class Prepared:
    """An algorithm with its C-dependent work done; `solve` edits one batch, `memory` starts the state
    a sequential run carries from batch to batch (None: batches forget each other)."""

    name: str
    system: str  # the small system, for messages
    T: Callable[[torch.Tensor], torch.Tensor]
    ridge: Callable[[int], float]
    max_batch: int | None
    mode: str
    max_condition: float
    memory_kind: Callable | None = None  # (T) -> the state: KeyMemory, RunningInverse, ShrinkingProjector
    restraint: Callable | None = None  # (A, B, W) -> (A, B): ΔW changed after the solve (`restraints`)
    anchored: bool = False  # its values are rescaled to NAS's anchor before the residual (editing/nas.py)

    def memory(self):
        """A fresh sequential state for this solver, or None for an algorithm that keeps none."""
        return None if self.memory_kind is None else self.memory_kind(self.T)

    def transform(self, K: torch.Tensor) -> torch.Tensor:
        """T K in float64 on C's device: the O(d_in²·n) part, shareable between batches of one call."""
        return self.T(K.to(self.T.device, torch.float64))

    def solve(self, K: torch.Tensor, R: torch.Tensor, *, memory=None, labels: Sequence | None = None,
              TK: torch.Tensor | None = None, weight: torch.Tensor | None = None) -> Solved:
        """The factors of ΔW for keys K (d_in, n) and residuals R (d_out, n), in K and R's dtype.

        `memory`: the sequential state (`memory()`, grown by the caller after each batch): earlier keys
        join the small system, or the state is T itself (`replaces_operator`: RLSEdit's running inverse,
        EvoEdit's shrinking projector). `weight`: the layer's W (d_out, d_in) as the batch finds it, for
        an algorithm with a restraint (SPHERE, +prune, +rect)."""
        check_finite(K=K, R=R)
        n = K.shape[1]
        check_labels(labels, n)
        if self.max_batch is not None and n > self.max_batch:
            raise ValueError(f"{self.name} edits {self.max_batch} fact at a time; got a batch of {n}")
        if self.restraint is not None and weight is None:
            raise ValueError(f"{self.name} changes ΔW by the layer's weight after the solve: pass weight=W")
        T = memory if getattr(memory, "replaces_operator", False) else self.T
        keys = memory if isinstance(memory, KeyMemory) and memory.size else None
        device = T.device
        K64, R64 = K.to(device, torch.float64).contiguous(), R.to(device, torch.float64)
        warn_near_parallel(K64, labels)
        TK = T(K64) if TK is None else TK  # (d_in, n)
        diagnostics = {"fallback": None, "condition_C": T.condition, "fallback_C": T.fallback}
        rho = float(self.ridge(n))
        if keys is None:
            M = K64.T @ TK  # (n, n)
            B = self._small(M, TK.T, rho, K64, labels, diagnostics).T  # (d_in, n): B = T K (M + ρI)⁻¹
        else:
            cross = keys.K.T @ TK  # (m, n)
            M = torch.cat([torch.cat([K64.T @ TK, cross.T], 1), torch.cat([cross, keys.gram], 1)], 0)  # (n+m, n+m)
            E = torch.zeros(len(M), n, dtype=torch.float64, device=device)  # (n + m, n): the first n columns of I
            E[:n] = torch.eye(n, dtype=torch.float64, device=device)
            everyone = None if labels is None else [*labels, *(f"earlier-batch key {j}" for j in range(keys.size))]
            X = self._small(M, E, rho, torch.cat([K64, keys.K], 1), everyone, diagnostics)  # (n + m, n)
            B = TK @ X[:n] + keys.TK @ X[n:]  # (d_in, n)
        A = R64
        if self.restraint is not None:
            A, B = self.restraint(A, B, weight.to(device, torch.float64))  # (d_out, n'), (d_in, n')
        dtype = torch.result_type(K, R)
        A, B = A.to(dtype), B.to(dtype)  # (d_out, n'), (d_in, n'): ΔW = A Bᵀ
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
    restraint = None if algorithm.restraint is None else (lambda A, B, W: algorithm.restraint(A, B, W, settings))
    return Prepared(algorithm.name, algorithm.system, T, lambda n: algorithm.ridge(settings, n), algorithm.max_batch,
                    on_ill_conditioned, max_condition, algorithm.memory, restraint, algorithm.anchored)
