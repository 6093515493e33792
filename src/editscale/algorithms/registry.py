"""Every editing algorithm, declared once: adding one means one entry here (and its settings).

An entry says which edit settings the algorithm reads (so only those rerun its results), how to
build its operator T from C, its ridge ρ for a batch of n, and what it is: the state a sequential
run carries from batch to batch (earlier keys, a running inverse, a shrinking projector), a
restraint that changes ΔW after the solve, whether it spreads an edit over a window of layers, and
whether it holds its edits as equality constraints. Code outside this registry asks these
properties, never an algorithm's name. The maths is in `prepared` and `restraints`.

A restraint that composes with any algorithm is an *add-on* (`ADDONS`), named after it with "+":
"memit_seq+prune", "alphaedit+rect". The composed name is the algorithm: it reads both entries'
settings, and its artifacts are named by it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from . import restraints
from .prepared import InverseOfC, KeyMemory, NullSpaceProjector, RunningInverse, ShrinkingProjector


@dataclass(frozen=True)
class Algorithm:
    name: str
    settings: tuple[str, ...]  # edit settings it reads
    operator: Callable  # (C, settings, *, mode, max_condition) -> T
    ridge: Callable[[dict, int], float]  # (settings, n) -> ρ
    system: str  # the small system it solves, for messages
    memory: Callable | None = None  # (T) -> the state a sequential run carries; None: batches forget each other
    restraint: Callable | None = None  # (A, B, W, settings) -> (A, B): ΔW changed after the solve, given W
    # its values are rescaled to the unedited model's typical norm before the residual (NAS: editing/nas.py)
    anchored: bool = False
    window: bool = True  # it can spread an edit over a window of layers (False: it edits one layer)
    equality: bool = False  # its edits are equality constraints (ROME, EMMET), not a least-squares fit
    max_batch: int | None = None
    source: str = ""  # where the update comes from

    @property
    def remembers(self) -> bool:
        """A sequential run stores each batch's keys, from which this state is rebuilt on a resume."""
        return self.memory is not None


def _keys(T):
    return KeyMemory(T=T)


def _inverse(C, settings, *, mode, max_condition):
    return InverseOfC(C, mode=mode, max_condition=max_condition)


def _projector(C, settings, *, mode, max_condition):
    return NullSpaceProjector(C, settings["nullspace_threshold"])


def _scaled_inverse(C, settings, *, mode, max_condition):
    """(λC)⁻¹: RLSEdit's T₀, so that its ridge is 1 and its running inverse holds λ."""
    return InverseOfC(settings["mom2_update_weight"] * C, mode=mode, max_condition=max_condition)


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
              "AlphaEdit: UᵀPU + αI", memory=_keys, source="Fang et al. 2025 (AlphaEdit), eq. 11; AlphaEdit_main.py"),
    # ΔW = R Kᵀ (λC + αI + Σ_p K_pK_pᵀ + KKᵀ)⁻¹: MEMIT with a Frobenius norm penalty α‖ΔW‖² on each batch's
    # update and the keys of every earlier batch preserved with weight 1, as coded in
    # scalable-model-editing/knowledge-editing-regularization encore/encore_main.py (α = update_norm_lambda:
    # 20 for Llama-3-8B, 10 for Llama-2-7B and GPT2-XL in its hparams/ENCORE files). With α = 0 and no
    # earlier batches it is MEMIT.
    Algorithm("encore", ("mom2_update_weight", "update_norm_lambda"), _regularised_inverse,
              lambda s, n: s["mom2_update_weight"], "ENCORE: Uᵀ(C + α/λ·I)⁻¹U + λI", memory=_keys,
              source="Gupta et al. 2025 (ENCORE, arXiv 2502.01636); knowledge-editing-regularization encore_main.py"),
    # ΔW = R Kᵀ (λC + Σ_p K_pK_pᵀ + KKᵀ)⁻¹: MEMIT with every earlier batch's keys kept in its normal
    # equations (weight 1, no ridge), so that with the values fixed in advance the sequential total
    # equals one MEMIT batch of them all (docs/design.md §2). ENCORE at α = 0.
    Algorithm("memit_seq", ("mom2_update_weight",), _inverse, lambda s, n: s["mom2_update_weight"],
              "MEMIT_seq: UᵀC⁻¹U + λI", memory=_keys,
              source="OTE-SE (ICML 2026); Wangzzzzzzzz/OTE-SE-Alignment memit/memit_seq_main.py @106998a"),
    # The same normal equations by recursive least squares: T_t = (λC + Σ_{s≤t} K_sK_sᵀ)⁻¹ kept dense
    # and downdated by Woodbury after each batch, B = T_t K; a batch costs O(d_in²·n) whatever its history.
    Algorithm("rlsedit", ("mom2_update_weight",), _scaled_inverse, lambda s, n: 1.0,
              "RLSEdit: KᵀT_{t-1}K + I", memory=RunningInverse,
              source="RLSEdit (IJCAI 2026); Euphoria040201/RLSEdit RLSEdit/RLSEdit_main.py @6688b89"),
    # AlphaEdit without earlier keys in the system: instead, after each batch the projector loses the
    # directions of P K, so later batches cannot move earlier keys' outputs. ΔW = R (KᵀPK + αI)⁻¹ KᵀP.
    Algorithm("evoedit", ("nullspace_threshold", "evoedit_l2"), _projector, lambda s, n: s["evoedit_l2"],
              "EvoEdit: KᵀP_tK + αI", memory=ShrinkingProjector,
              source="EvoEdit (ACL 2026 Findings); Euphoria040201/RLSEdit EvoEdit/EvoEdit_main.py @6688b89"),
    # AlphaEdit's ΔW, then ΔW (I − α UUᵀ): U the principal directions of the layer's current weight
    # (rows at unit norm), the fewest holding more than η of the energy; recomputed for every batch.
    Algorithm("sphere", ("nullspace_threshold", "alphaedit_l2", "sphere_ratio", "sphere_strength"), _projector,
              lambda s, n: s["alphaedit_l2"], "SPHERE: UᵀPU + αI", memory=_keys,
              restraint=lambda A, B, W, s: restraints.sphere(A, B, W, ratio=s["sphere_ratio"],
                                                           strength=s["sphere_strength"]),
              source="SPHERE (ICLR 2026); zjunlp/EasyEdit easyeditor/models/SPHERE/SPHERE_main.py @14cea82"),
)}


@dataclass(frozen=True)
class Addon:
    """What composes with any algorithm: a restraint on its ΔW, after its own (if any), given the layer's
    current weight, or its values anchored to the unedited model's norm."""
    name: str
    settings: tuple[str, ...]
    restraint: Callable | None = None  # (A, B, W, settings) -> (A, B)
    anchored: bool = False
    source: str = ""


ADDONS: dict[str, Addon] = {a.name: a for a in (
    # Each batch's singular values above the weight's largest σ_max: σ_max + ln(σ/σ_max). No settings.
    Addon("prune", (), lambda A, B, W, s: restraints.prune(A, B, W),
          source="PRUNE (Ma et al. 2025), as OTE-SE-Alignment memit/memit_seq_prune_main.py applies it per batch"),
    # Each batch's ΔW kept only where its change relative to W is in the top rect_keep percent.
    Addon("rect", ("rect_keep",), lambda A, B, W, s: restraints.rect(A, B, W, keep=s["rect_keep"]),
          source="RECT (Gu et al. 2024), as OTE-SE-Alignment memit/memit_seq_rect_main.py applies it per batch"),
    # Every v* rescaled to the unedited model's mean norm before the residual is taken (editing/nas.py).
    Addon("nas", (), anchored=True,
          source="NAS; SasyaTitech/NAS util/vstar_stats.py, NAS/compute_z.py @5acab48"),
)}
ADDON = "+"


def _composed(base: Algorithm, addons: list[Addon]) -> Algorithm:
    """`base` with each add-on's restraint after its own, in the order named."""
    steps = [s for s in (base.restraint, *(a.restraint for a in addons)) if s is not None]

    def restraint(A, B, W, settings):
        for step in steps:
            A, B = step(A, B, W, settings)
        return A, B

    settings = tuple(dict.fromkeys((*base.settings, *(s for a in addons for s in a.settings))))
    return dataclasses.replace(base, name=ADDON.join([base.name, *(a.name for a in addons)]), settings=settings,
                               restraint=restraint if steps else None,
                               anchored=base.anchored or any(a.anchored for a in addons),
                               source="; ".join([base.source, *(a.source for a in addons)]))


def get(name: str) -> Algorithm:
    """The registry entry of `name`: an algorithm, or one with add-ons ("memit_seq+prune")."""
    base, *addons = name.split(ADDON)
    if base not in ALGORITHMS:
        raise ValueError(f"algorithm {name!r}: {base!r} is not one of {', '.join(ALGORITHMS)}")
    unknown = [a for a in addons if a not in ADDONS]
    if unknown or len(set(addons)) != len(addons):
        raise ValueError(f"algorithm {name!r}: add-ons after '{ADDON}' are each one of {', '.join(ADDONS)}, "
                         f"named once")
    return _composed(ALGORITHMS[base], [ADDONS[a] for a in addons]) if addons else ALGORITHMS[base]


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
