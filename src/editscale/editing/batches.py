"""Applying edits: settings, the edit of a batch, and independent batches against the unedited model.

Keys and values come from `keys` and `values`, ΔW from the pure `algorithms`. The model
is touched only through `apply_delta`, which goes through the layout, so GPT-2's
transposed weights need no special case here. One batch's edit, at one layer or a window of
them, is `window.edit_window`; sequential batches are in `sequential`.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import torch

from editscale import algorithms
from editscale.algorithms import Prepared
from editscale.settings import EditSettings, ValueSettings, results

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class EditConfig:
    """One edit job: the algorithm, the layer, and the settings its keys, values and ΔW depend on."""
    algorithm: str
    layer: int
    edit: EditSettings = field(default_factory=EditSettings)
    values: ValueSettings = field(default_factory=ValueSettings)
    key_batch_size: int = 16  # execution only
    value_batch_size: int = ValueSettings.batch_size  # execution only; the one default is settings.py's

    def __post_init__(self):
        algorithms.get(self.algorithm)

    def settings(self) -> dict:
        """The edit settings this algorithm reads (nothing else changes its ΔW)."""
        return results(self.edit, only=algorithms.get(self.algorithm).settings)

    def counted(self) -> dict:
        """Everything this edit's results depend on, as `settings.results` counts it: the algorithm, the
        layer, its own edit settings with what it does to an ill-conditioned system, and the value
        optimisation's. The one description behind the rules' params, run folders and an Edit's provenance."""
        return {"algorithm": self.algorithm, "layer": self.layer,
                "edit": results(self.edit, only=(*algorithms.get(self.algorithm).settings, "on_ill_conditioned")),
                "values": results(self.values)}


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """The one way N edits are cut into batches of B: [0, B), [B, 2B), … (the last may be shorter)."""
    return [slice(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def prepare(cfg: EditConfig, C: torch.Tensor) -> Prepared:
    """cfg's algorithm with its work on C done once, on C's device (put C on the model's device)."""
    return algorithms.prepare(algorithms.get(cfg.algorithm), C, cfg.settings(),
                              on_ill_conditioned=cfg.edit.on_ill_conditioned)


def check_conflicts(batches, allow: bool = False,
                    fix: str = "data: unique_subjects: true, or edit: allow_conflicts: true to edit them anyway") -> None:
    """Refuse (or, with `allow`, warn about) batches that edit one subject towards different targets:
    the solvers would average the two, so neither edit is what was asked for."""
    found = []
    for facts in batches:
        by_subject: dict = {}
        for fact in facts:
            by_subject.setdefault(fact["subject"], []).append(fact)
        for subject, group in by_subject.items():
            if len({f["target_new"] for f in group}) > 1:
                found.append(f"{subject!r} (cases {', '.join(str(f['case_id']) for f in group)}: "
                             f"{' vs '.join(repr(f['target_new']) for f in group)})")
    if not found:
        return
    shown = "; ".join(found[:10]) + (f"; and {len(found) - 10} more" if len(found) > 10 else "")
    if not allow:
        raise ValueError(f"conflicting edits in one batch, same subject and different targets: {shown}. Fix: {fix}")
    log.warning("conflicting edits in one batch (allowed by edit.allow_conflicts): %s", shown)


def apply_delta(model, layout, layer: int, delta: torch.Tensor, sign: float = 1.0) -> None:
    """W ← W + sign·ΔW, in W's dtype; refuses non-finite ΔW so nothing bad reaches the model."""
    if not torch.isfinite(delta).all():
        raise ValueError(f"refusing to write a non-finite ΔW into layer {layer}")
    weight = layout.weight(model, layer)
    with torch.no_grad():
        weight.add_(delta.to(weight.device, weight.dtype), alpha=sign)


def revert_delta(model, layout, layer: int, delta: torch.Tensor) -> None:
    apply_delta(model, layout, layer, delta, sign=-1.0)


def weights(model, layout, layers) -> dict:
    """{layer: a copy of W_layer as it is now} (d_out, d_in) each: what `put_weights` puts back."""
    return {layer: layout.weight(model, layer).detach().clone() for layer in layers}


def put_weights(model, layout, saved: dict) -> None:
    """W_layer ← saved[layer], bit for bit, for every layer saved (the one way weights are restored)."""
    with torch.no_grad():
        for layer, weight in saved.items():
            layout.weight(model, layer).copy_(weight)


@contextlib.contextmanager
def restored(model, layout, layers):
    """The block may write `layers`' weights: they are put back as they were when it ends or is left."""
    saved = weights(model, layout, layers)
    try:
        yield saved
    finally:
        put_weights(model, layout, saved)


@dataclass
class BatchEdit:
    A: torch.Tensor  # (d_out, n)
    B: torch.Tensor  # (d_in, n): ΔW = A Bᵀ
    keys: torch.Tensor  # (d_in, n)
    TK: torch.Tensor  # the solver's T K, for its sequential state's absorb
    diagnostics: dict

    @property
    def delta(self) -> torch.Tensor:
        return self.A @ self.B.T  # (d_out, n) @ (n, d_in) -> ΔW (d_out, d_in)


def independent_batches(solver: Prepared, K: torch.Tensor, R: torch.Tensor, batch_size: int,
                        labels=None, weight: torch.Tensor | None = None) -> list[BatchEdit]:
    """Split N facts (columns of K, R, computed on the unedited model) into batches of `batch_size`,
    each solved against the unedited model (its weight W₀ for a restraint). T K is computed for all N
    at once (one multi-column solve), so N single edits cost one O(d_in²·N) pass, not N of them."""
    TK_all = solver.transform(K)
    out = []
    for cols in batch_slices(K.shape[1], batch_size):
        names = None if labels is None else list(labels[cols])
        # K (d_in, b), R (d_out, b): this batch's columns
        solved = solver.solve(K[:, cols], R[:, cols], labels=names, TK=TK_all[:, cols], weight=weight)
        out.append(BatchEdit(solved.A, solved.B, K[:, cols], solved.TK, solved.diagnostics))
    return out
