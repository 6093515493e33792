"""Every editing algorithm, declared once: adding one means one entry here (and its settings).

An entry says which edit settings the algorithm reads (so only those rerun its results), how to
build its operator T from C, its ridge ρ for a batch of n, and what it is: whether it keeps the keys
of earlier sequential batches, spreads an edit over a window of layers, and holds its edits as
equality constraints. Code outside this registry asks these properties, never an algorithm's name.
The maths is in `prepared`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .prepared import InverseOfC, NullSpaceProjector


@dataclass(frozen=True)
class Algorithm:
    name: str
    settings: tuple[str, ...]  # edit settings it reads
    operator: Callable  # (C, settings, *, mode, max_condition) -> T
    ridge: Callable[[dict, int], float]  # (settings, n) -> ρ
    system: str  # the small system it solves, for messages
    remembers: bool = False  # earlier sequential batches' keys join the system
    window: bool = True  # it can spread an edit over a window of layers (False: it edits one layer)
    equality: bool = False  # its edits are equality constraints (ROME, EMMET), not a least-squares fit
    max_batch: int | None = None
    source: str = ""  # where the update comes from


def _inverse(C, settings, *, mode, max_condition):
    return InverseOfC(C, mode=mode, max_condition=max_condition)


def _projector(C, settings, *, mode, max_condition):
    return NullSpaceProjector(C, settings["nullspace_threshold"])


def _regularised_inverse(C, settings, *, mode, max_condition):
    """ENCORE's (C + α/λ·I)⁻¹: λC + αI, the norm constraint folded into the preserved keys."""
    return InverseOfC(C, settings["update_norm_lambda"] / settings["mom2_update_weight"], mode=mode,
                      max_condition=max_condition)


ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (
    Algorithm("rome", (), _inverse, lambda s, n: 0.0, "ROME: kᵀC⁻¹k", max_batch=1, window=False,
              equality=True,
              source="Meng et al. 2022 (ROME), eq. 2"),
    Algorithm("memit", ("mom2_update_weight",), _inverse, lambda s, n: s["mom2_update_weight"],
              "MEMIT: KᵀC⁻¹K + λI", source="Meng et al. 2023 (MEMIT), eq. 14; unified-model-editing memit_main.py"),
    Algorithm("emmet", ("mom2_update_weight", "emmet_lambda"), _inverse,
              lambda s, n: s["mom2_update_weight"] * s["emmet_lambda"] if n > 1 else 0.0, "EMMET: KᵀC⁻¹K + λεI", equality=True,
              source="Gupta et al. 2024 (EMMET); unified-model-editing emmet_main.py"),
    Algorithm("alphaedit", ("nullspace_threshold", "alphaedit_l2"), _projector, lambda s, n: s["alphaedit_l2"],
              "AlphaEdit: UᵀPU + αI", remembers=True, source="Fang et al. 2025 (AlphaEdit), eq. 11; AlphaEdit_main.py"),
    # ΔW = R Kᵀ (λC + αI + Σ_p K_pK_pᵀ + KKᵀ)⁻¹: MEMIT with a Frobenius norm penalty α‖ΔW‖² on each batch's
    # update and the keys of every earlier batch preserved with weight 1, as coded in
    # scalable-model-editing/knowledge-editing-regularization encore/encore_main.py (α = update_norm_lambda:
    # 20 for Llama-3-8B, 10 for Llama-2-7B and GPT2-XL in its hparams/ENCORE files). With α = 0 and no
    # earlier batches it is MEMIT.
    Algorithm("encore", ("mom2_update_weight", "update_norm_lambda"), _regularised_inverse,
              lambda s, n: s["mom2_update_weight"], "ENCORE: Uᵀ(C + α/λ·I)⁻¹U + λI", remembers=True,
              source="Gupta et al. 2025 (ENCORE, arXiv 2502.01636); knowledge-editing-regularization encore_main.py"),
)}


def get(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm {name!r} is not one of {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]


# A variant is an algorithm with some of its own edit settings overridden, so that one config can
# compare settings side by side (EMMET's λ at one B): "emmet@emmet_lambda=1", or several as
# "encore@mom2_update_weight=50,update_norm_lambda=1". The name goes into artifact paths as the
# algorithm, so it is written one way only: settings in name order, values as `format(value, "g")`.
VARIANT, SEPARATOR = "@", ","


def variant_name(algorithm: str, overrides: dict) -> str:
    """The one spelling of a variant: variant_name("emmet", {"emmet_lambda": 1.0}) == "emmet@emmet_lambda=1"."""
    if not overrides:
        return algorithm
    return algorithm + VARIANT + SEPARATOR.join(f"{key}={float(overrides[key]):g}" for key in sorted(overrides))


def variant(name: str) -> tuple[Algorithm, dict]:
    """An algorithm or variant name as (the algorithm, {setting: value} it overrides); ValueError, with the
    fix, for an unknown algorithm, a setting the algorithm does not read, a value that is no number, or a
    name not written as `variant_name` writes it."""
    base, _, rest = name.partition(VARIANT)
    algorithm = get(base)
    if not rest:
        return algorithm, {}
    overrides = {}
    for item in rest.split(SEPARATOR):
        key, equals, value = item.partition("=")
        if not equals or key not in algorithm.settings:
            readable = ", ".join(algorithm.settings) or "no edit settings"
            raise ValueError(f"algorithm variant {name!r}: {item!r} is not <setting>=<number> for a setting "
                             f"{base} reads ({readable})")
        try:
            overrides[key] = float(value)
        except ValueError:
            raise ValueError(f"algorithm variant {name!r}: {key} = {value!r} is not a number") from None
    canonical = variant_name(base, overrides)
    if name != canonical:
        raise ValueError(f"algorithm variant {name!r} is written {canonical!r}: a variant has one spelling, "
                         f"because it names its artifacts")
    return algorithm, overrides
