"""Restraints: a batch's ΔW = A Bᵀ changed after it is solved, given the layer's weight W as it is now.

Pure functions of tensors, in float64: W (d_out, d_in) is the weight the batch is applied to (the
unedited one in batch editing, the already-edited one in a sequential run), A (d_out, n) and
B (d_in, n) the batch's factors. Each returns new factors (A', B') with ΔW' = A' B'ᵀ.

  SPHERE  ΔW' = ΔW (I − α U Uᵀ)           U: top eigenvectors of Ŵᵀ Ŵ / d_out, Ŵ = W with unit rows,
                                           enough for a share of the energy above η (EasyEdit SPHERE_main.py)
  PRUNE   σ' = σ_max + ln(σ / σ_max)       for each singular value σ of ΔW above σ_max = ‖W‖₂
                                           (OTE-SE-Alignment memit_seq_prune_main.py)
  RECT    ΔW' = ΔW ⊙ [|ΔW / (W + ε)| ≥ its ⌊(100 − k)% · d_out·d_in⌋-th smallest value]   ε = 1e-8
                                           over the whole matrix: about its top k% (OTE-SE-Alignment
                                           memit_seq_rect_main.py, k = 40)

SPHERE and PRUNE keep ΔW's rank (≤ n); RECT's ΔW' is sparse, not low-rank, so its factors are
dense: A' = I (d_out, d_out), B' = ΔW'ᵀ (d_in, d_out), or A' = ΔW', B' = I (d_in, d_in) when
d_in < d_out.
"""

from __future__ import annotations

import torch

RECT_EPS = 1e-8  # the reference's guard on |W| in the relative change


def sphere(A: torch.Tensor, B: torch.Tensor, W: torch.Tensor, *, ratio: float, strength: float):
    """ΔW (I − α U Uᵀ) as factors: B' = B − α U (Uᵀ B). α = strength, η = ratio; either ≤ 0: unchanged."""
    if ratio <= 0 or strength <= 0:
        return A, B
    U = principal_directions(W, ratio)  # (d_in, r)
    B64 = B.to(torch.float64)
    return A, (B64 - strength * U @ (U.T @ B64)).to(B.dtype)  # (d_in, n)


def principal_directions(W: torch.Tensor, ratio: float) -> torch.Tensor:
    """U (d_in, r): the top eigenvectors of Ŵᵀ Ŵ / d_out (Ŵ: W's rows at unit norm), r = 1 + the number
    of k whose top-k share of the trace is ≤ η, i.e. the fewest that hold more than η of it."""
    W64 = W.to(torch.float64)
    unit = W64 / (W64.norm(dim=1, keepdim=True) + 1e-8)  # (d_out, d_in)
    eigvals, eigvecs = torch.linalg.eigh(unit.T @ unit / len(unit))  # ascending, (d_in,), (d_in, d_in)
    share = eigvals.flip(0).cumsum(0) / eigvals.sum()  # (d_in,) top-k share of the energy, k = 1 … d_in
    r = min(int((share <= ratio).sum()) + 1, len(share))
    return eigvecs[:, -r:]  # (d_in, r)


def prune(A: torch.Tensor, B: torch.Tensor, W: torch.Tensor):
    """ΔW with every singular value σ > σ_max(W) replaced by σ_max + ln(σ / σ_max), from its thin SVD
    through the factors: A = Q_a R_a, B = Q_b R_b, so ΔW = Q_a (R_a R_bᵀ) Q_bᵀ, an n × n SVD."""
    A64, B64 = A.to(torch.float64), B.to(torch.float64)
    Qa, Ra = torch.linalg.qr(A64)  # (d_out, n), (n, n)
    Qb, Rb = torch.linalg.qr(B64)  # (d_in, n), (n, n)
    Us, s, Vh = torch.linalg.svd(Ra @ Rb.T)  # ΔW = (Qa Us) diag(s) (Qb Vhᵀ)ᵀ
    top = torch.linalg.matrix_norm(W.to(torch.float64), ord=2)
    s = torch.where(s > top, top + torch.log(s / top), s)
    return (Qa @ Us * s).to(A.dtype), (Qb @ Vh.T).to(B.dtype)  # (d_out, n), (d_in, n)


def rect(A: torch.Tensor, B: torch.Tensor, W: torch.Tensor, *, keep: float):
    """ΔW with only the entries whose relative change |ΔW / (W + ε)| is at least the reference's
    threshold, its ⌊numel·(100 − k)/100⌋-th smallest (k = keep, in percent; ε added to the signed W);
    the rest set to 0. Dense factors (module docstring)."""
    W64 = W.to(torch.float64)
    delta = A.to(torch.float64) @ B.to(torch.float64).T  # (d_out, d_in)
    relative = (delta / (W64 + RECT_EPS)).abs()
    rank = int(relative.numel() * (100 - keep) / 100)
    if rank >= 1:  # k = 100 keeps everything
        delta = delta * (relative >= torch.kthvalue(relative.flatten(), rank).values)
    d_out, d_in = delta.shape
    if d_out <= d_in:  # A' = I, B' = ΔW'ᵀ
        return torch.eye(d_out, dtype=A.dtype, device=A.device), delta.T.to(B.dtype)
    return delta.to(A.dtype), torch.eye(d_in, dtype=B.dtype, device=B.device)
