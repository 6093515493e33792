"""Applying edits: one batch, independent batches, and sequential batches with checkpoints.

Keys and values come from `keys` and `values`, ΔW from the pure `solvers`. The model
is touched only through `apply_delta`, which goes through the layout, so GPT-2's
transposed weights need no special case here.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import artifacts, solvers
from .keys import compute_keys
from .values import ValueConfig, Values, compute_values

log = logging.getLogger(__name__)

ALGORITHMS = ("rome", "memit", "emmet", "alphaedit")


@dataclass(frozen=True)
class EditConfig:
    algorithm: str
    layer: int
    mom2_update_weight: float = 15000.0  # MEMIT's λ
    emmet_lambda: float = 0.1  # EMMET's ε
    nullspace_threshold: float = 1e-2  # AlphaEdit: eigenvalues of C below this span the null space
    alphaedit_l2: float = 10.0  # AlphaEdit's α
    on_ill_conditioned: str = "raise"  # or "ridge" / "pinv": fall back with a logged warning
    key_batch_size: int = 16
    value_batch_size: int = 16
    values: ValueConfig = field(default_factory=ValueConfig)

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm {self.algorithm!r} is not one of {', '.join(ALGORITHMS)}")

    @staticmethod
    def from_dict(d: dict) -> "EditConfig":
        d = dict(d)
        d["values"] = ValueConfig(**d.get("values", {}))
        return EditConfig(**d)


def apply_delta(model, layout, layer: int, delta: torch.Tensor, sign: float = 1.0) -> None:
    """W ← W + sign·ΔW, in W's dtype; refuses non-finite ΔW so nothing bad reaches the model."""
    if not torch.isfinite(delta).all():
        raise ValueError(f"refusing to write a non-finite ΔW into layer {layer}")
    weight = layout.weight(model, layer)
    with torch.no_grad():
        weight.add_(delta.to(weight.device, weight.dtype), alpha=sign)


def revert_delta(model, layout, layer: int, delta: torch.Tensor) -> None:
    apply_delta(model, layout, layer, delta, sign=-1.0)


def solve(cfg: EditConfig, K: torch.Tensor, R: torch.Tensor, C: torch.Tensor, *, P: torch.Tensor | None = None,
          K_prev: torch.Tensor | None = None, labels=None) -> tuple[tuple[torch.Tensor, torch.Tensor], dict]:
    """Factors (A, B) of ΔW = A Bᵀ for keys K (d_in, n) and residuals R (d_out, n), and solver diagnostics."""
    diag: dict = {}
    common = dict(labels=labels, on_ill_conditioned=cfg.on_ill_conditioned, diagnostics=diag, factored=True)
    if cfg.algorithm == "rome":
        if K.shape[1] != 1:
            raise ValueError(f"ROME edits one fact at a time; got a batch of {K.shape[1]}")
        factors = solvers.rome(K[:, 0], R[:, 0], C, **common)
    elif cfg.algorithm == "memit":
        factors = solvers.memit(K, R, C, cfg.mom2_update_weight, **common)
    elif cfg.algorithm == "emmet":
        factors = solvers.emmet(K, R, C, cfg.emmet_lambda, cfg.mom2_update_weight, **common)
    else:
        if P is None:
            P = solvers.nullspace_projector(C, cfg.nullspace_threshold)
        factors = solvers.alphaedit(K, R, P, K_prev, cfg.alphaedit_l2, **common)
    return factors, diag


def independent_batches(cfg: EditConfig, K: torch.Tensor, R: torch.Tensor, C: torch.Tensor, batch_size: int,
                        labels=None) -> list[tuple[tuple[torch.Tensor, torch.Tensor], dict]]:
    """Split N facts (columns of K, R, computed on the unedited model) into batches of `batch_size`,
    each solved against the unedited model: [((A, B), diagnostics), ...], ΔW_b = A Bᵀ."""
    P = solvers.nullspace_projector(C, cfg.nullspace_threshold) if cfg.algorithm == "alphaedit" else None
    out = []
    for start in range(0, K.shape[1], batch_size):
        cols = slice(start, start + batch_size)
        names = None if labels is None else list(labels[cols])
        out.append(solve(cfg, K[:, cols], R[:, cols], C, P=P, labels=names))
    return out


@dataclass
class BatchEdit:
    A: torch.Tensor  # (d_out, n)
    B: torch.Tensor  # (d_in, n): ΔW = A Bᵀ
    keys: torch.Tensor  # (d_in, n)
    diagnostics: dict

    @property
    def delta(self) -> torch.Tensor:
        return self.A @ self.B.T


def edit_batch(model, tokenizer, layout, cfg: EditConfig, facts, templates, C, *, P=None, K_prev=None,
               known: tuple[torch.Tensor, Values] | None = None) -> BatchEdit:
    """Keys, values and ΔW for one batch of facts, on the model as it is now (ΔW not applied).

    `known` is (keys (n, d_in), Values) already computed for these facts on this very model,
    e.g. the cached unedited-model values for a sequential run's first batch.
    """
    if known is None:
        K = compute_keys(model, tokenizer, layout, cfg.layer, facts, templates, batch_size=cfg.key_batch_size)
        V = compute_values(model, tokenizer, layout, cfg.layer, facts, templates, cfg.values,
                           batch_size=cfg.value_batch_size)
    else:
        K, V = known
        if len(K) != len(facts) or len(V.residual) != len(facts):
            raise ValueError(f"{len(K)} known keys and {len(V.residual)} values for a batch of {len(facts)} facts")
    labels = [f.get("case_id", i) for i, f in enumerate(facts)]
    (A, B), diag = solve(cfg, K.T, V.residual.T, C, P=P, K_prev=K_prev, labels=labels)
    edit = BatchEdit(A, B, K.T, diag)
    diag.update(
        n=len(facts),
        residual_norm=float(V.residual.norm(dim=1).mean()),
        value_loss=float(V.loss.mean()),
        value_steps=float(V.steps.float().mean()),
        converged=float(V.converged.float().mean()),
        delta_norm=float(edit.delta.norm()),
    )
    return edit


def sequential(model, tokenizer, layout, cfg: EditConfig, facts, templates, C, batch_size: int,
               checkpoint: str | Path, *, after_batch: Callable[[int, list], None] | None = None,
               first_batch: tuple[torch.Tensor, Values] | None = None) -> dict:
    """Apply batches of `batch_size` facts one after another to the same (initially unedited) model.

    Each batch's keys and values are computed on the model as already edited; C stays
    fixed; AlphaEdit's K_prev accumulates earlier keys. After every batch the total ΔW,
    the batches done, the RNG state and the diagnostics go atomically to `checkpoint`,
    and a rerun with the same arguments resumes there. `after_batch(b, batch_facts)` runs
    after batch b is applied and before it is checkpointed (immediate evaluation); it may
    run twice for a batch interrupted in between, so it must overwrite, not append.
    `first_batch` is (keys, Values) of batch 0 on the unedited model, e.g. from the cached
    value chunks: the model is unedited only then, so later batches always recompute.
    """
    checkpoint = Path(checkpoint)
    run_id = _run_id(cfg, facts, templates, batch_size)
    state = load_checkpoint(checkpoint) if checkpoint.exists() else None
    if state is not None and state["run_id"] != run_id:
        raise ValueError(f"checkpoint {checkpoint} belongs to another run (config, facts, templates or batch size "
                         f"differ); delete it to start over")
    weight = layout.weight(model, cfg.layer)
    if state is None:
        state = {"delta": torch.zeros(weight.shape, dtype=torch.float32), "batches_done": 0,
                 "k_prev": torch.zeros(weight.shape[1], 0), "diagnostics": [], "run_id": run_id}
    else:
        log.info("resuming %s after batch %d", checkpoint, state["batches_done"])
        torch.set_rng_state(state["rng"])
        # The saved weight itself, not W0 + ΔW: rounding of that sum would make the rerun drift.
        with torch.no_grad():
            weight.copy_(state["weight"].to(weight.device, weight.dtype))
    P = solvers.nullspace_projector(C, cfg.nullspace_threshold) if cfg.algorithm == "alphaedit" else None
    batches = [facts[i : i + batch_size] for i in range(0, len(facts), batch_size)]
    for b in range(state["batches_done"], len(batches)):
        k_prev = state["k_prev"] if state["k_prev"].shape[1] else None
        known = first_batch if b == 0 else None
        edit = edit_batch(model, tokenizer, layout, cfg, batches[b], templates, C, P=P, K_prev=k_prev, known=known)
        delta = edit.delta
        apply_delta(model, layout, cfg.layer, delta)
        state["delta"] += delta.float().cpu()
        if cfg.algorithm == "alphaedit":  # only AlphaEdit reads earlier keys
            state["k_prev"] = torch.cat([state["k_prev"], edit.keys.float().cpu()], dim=1)
        state["batches_done"] = b + 1
        state["diagnostics"].append({"batch": b, **edit.diagnostics})
        # Evaluation first: a batch counts as done only once its results are recorded, so a
        # run killed in between redoes the batch (deterministically) rather than losing them.
        if after_batch is not None:
            after_batch(b, batches[b])
        state["weight"] = weight.detach().cpu().clone()
        save_checkpoint(state, checkpoint, cfg)
    return state


def save_checkpoint(state: dict, path: Path, cfg: EditConfig) -> None:
    tensors = {"delta": state["delta"], "weight": state["weight"], "k_prev": state["k_prev"],
               "rng": torch.get_rng_state()}
    meta = {"batches_done": state["batches_done"], "diagnostics": json.dumps(state["diagnostics"]),
            "config": json.dumps(asdict(cfg)), "run_id": state["run_id"]}
    artifacts.write_safetensors(tensors, path, metadata=meta)


def load_checkpoint(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return {"delta": tensors["delta"], "weight": tensors["weight"], "k_prev": tensors["k_prev"], "rng": tensors["rng"],
            "batches_done": int(meta["batches_done"]), "diagnostics": json.loads(meta["diagnostics"]),
            "run_id": meta["run_id"]}


def _run_id(cfg: EditConfig, facts, templates, batch_size: int) -> str:
    """What a checkpoint must agree with before a rerun may continue from it."""
    described = json.dumps([asdict(cfg), [f.get("case_id", f["subject"]) for f in facts], list(templates), batch_size],
                           sort_keys=True, default=str)
    return hashlib.sha256(described.encode()).hexdigest()[:16]
