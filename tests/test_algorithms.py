"""The prepared solvers against the plain path: the same ΔW, the same errors, none of the O(d_in³) work per edit."""

import logging
import math

import pytest
import torch

from editscale import algorithms, editing
from editscale.algorithms import IllConditionedError, KeyMemory, dense, prepare
from editscale.algorithms import prepared as prepared_module
from editscale.settings import EditSettings

D_IN, D_OUT = 40, 16
SETTINGS = dict(mom2_update_weight=15.0, emmet_lambda=0.1, nullspace_threshold=1e-2, alphaedit_l2=0.5,
                update_norm_lambda=2.0, evoedit_l2=0.5, sphere_ratio=0.5, sphere_strength=0.5, rect_keep=40.0)


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def problem(n, seed=0, dtype=torch.float64):
    """Keys, residuals and a C with a few small eigenvalues (AlphaEdit's null space), κ(C) ≈ 1e4."""
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(D_IN, D_IN, generator=g, dtype=torch.float64))
    eigs = torch.rand(D_IN, generator=g, dtype=torch.float64) + 0.5
    eigs[:10] = 1e-4
    C = U @ torch.diag(eigs) @ U.T
    K = torch.randn(D_IN, n, generator=g, dtype=torch.float64)
    R = torch.randn(D_OUT, n, generator=g, dtype=torch.float64)
    return K.to(dtype), R.to(dtype), C.to(dtype)


def solver(name, C, **overrides):
    return prepare(algorithms.get(name), C, {**SETTINGS, **overrides})


def dense_delta(name, K, R, C, K_prev=None, **overrides):
    s = {**SETTINGS, **overrides}
    if name == "rome":
        return dense.rome(K[:, 0], R[:, 0], C)
    if name == "memit":
        return dense.memit(K, R, C, s["mom2_update_weight"])
    if name == "emmet":
        return dense.emmet(K, R, C, s["emmet_lambda"], s["mom2_update_weight"])
    if name == "encore":
        return dense.encore(K, R, C, s["mom2_update_weight"], s["update_norm_lambda"], K_prev)
    P = dense.nullspace_projector(C.double(), s["nullspace_threshold"])
    return dense.alphaedit(K, R, P, K_prev, s["alphaedit_l2"])


@pytest.mark.parametrize("name,n", [("rome", 1), ("memit", 1), ("memit", 6), ("memit", 60), ("emmet", 1),
                                    ("emmet", 6), ("alphaedit", 1), ("alphaedit", 6), ("encore", 1), ("encore", 6)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_prepared_equals_the_plain_path(name, n, dtype):
    """Equal to 1e-8 relative in float64 (float32 results: both rounded to float32). n = 60 > d_in:
    MEMIT's n × n system is then larger than its d_in × d_in one, and still equal."""
    K, R, C = problem(n, dtype=dtype)
    out = solver(name, C).solve(K, R)
    assert out.A.dtype == out.B.dtype == dtype
    assert rel(out.A @ out.B.T, dense_delta(name, K, R, C)) < (1e-8 if dtype == torch.float64 else 1e-6)


@pytest.mark.parametrize("name", ["alphaedit", "encore"])
def test_earlier_batches_enter_as_the_plain_path_says(name):
    """Earlier keys absorbed batch by batch give the plain solve with K_p = all of them."""
    K, R, C = problem(5)
    earlier = [problem(m, seed=s)[0] for m, s in ((3, 1), (1, 2), (7, 3))]
    prepared = solver(name, C)
    memory = KeyMemory()
    for K_b in earlier:
        memory.absorb(K_b, prepared.transform(K_b))
    out = prepared.solve(K, R, memory=memory)
    assert rel(out.A @ out.B.T, dense_delta(name, K, R, C, torch.cat(earlier, 1))) < 1e-8


def test_encore_matches_its_closed_form_and_reduces_to_memit():
    """ΔW = R Kᵀ (λC + αI + Σ_p K_pK_pᵀ + KKᵀ)⁻¹, written out here independently; α = 0 with no
    earlier batches is MEMIT; the norm penalty shrinks ΔW."""
    K, R, C = problem(4)
    K_prev = problem(6, seed=5)[0]
    lam, alpha = SETTINGS["mom2_update_weight"], SETTINGS["update_norm_lambda"]
    A = lam * C + alpha * torch.eye(D_IN, dtype=torch.float64) + K_prev @ K_prev.T + K @ K.T
    by_hand = R @ K.T @ torch.linalg.inv(A)
    encore = solver("encore", C)
    memory = KeyMemory()
    memory.absorb(K_prev, encore.transform(K_prev))
    out = encore.solve(K, R, memory=memory)
    assert rel(out.A @ out.B.T, by_hand) < 1e-8
    plain = solver("encore", C, update_norm_lambda=0.0).solve(K, R)
    memit = solver("memit", C).solve(K, R)
    assert rel(plain.A @ plain.B.T, memit.A @ memit.B.T) < 1e-10
    assert float((out.A @ out.B.T).norm()) < float((memit.A @ memit.B.T).norm())


def test_independent_batches_share_one_transform_and_equal_separate_solves():
    K, R, C = problem(12)
    memit = solver("memit", C)
    together = editing.independent_batches(memit, K, R, 5)
    assert [e.A.shape[1] for e in together] == [5, 5, 2]
    for i, e in enumerate(together):
        alone = memit.solve(K[:, 5 * i : 5 * i + 5], R[:, 5 * i : 5 * i + 5])
        assert rel(e.A @ e.B.T, alone.A @ alone.B.T) < 1e-12


def test_no_edit_after_prepare_touches_a_d_in_sized_system(monkeypatch):
    """Everything O(d_in³) (spectra, factorisations of d_in × d_in matrices) happens in prepare only, for
    every algorithm whose ΔW does not depend on the current weight (a restraint's, SPHERE's, must read it
    per batch)."""
    K, R, C = problem(6)
    prepared = {name: solver(name, C) for name, a in algorithms.ALGORITHMS.items() if a.restraint is None}
    sizes = []
    for fn in ("eigvalsh", "eigh", "cholesky", "svd", "svdvals", "solve", "inv"):
        original = getattr(torch.linalg, fn)
        monkeypatch.setattr(torch.linalg, fn, lambda A, *a, _f=original, **k: sizes.append(A.shape[-1]) or _f(A, *a, **k))
    for name, p in prepared.items():
        remembered = p.memory()
        if remembered is not None:
            remembered.absorb(K[:, :3], p.transform(K[:, :3]) if isinstance(remembered, KeyMemory) else None)
        p.solve(K[:, :1] if name == "rome" else K, R[:, :1] if name == "rome" else R, memory=remembered)
    assert sizes and max(sizes) <= 6 + 3


def test_memit_woodbury_holds_at_a_large_lambda_and_many_keys():
    K, R, C = problem(30)
    for lam in (1e-3, 1.0, 1e4):
        out = solver("memit", C, mom2_update_weight=lam).solve(K, R)
        assert rel(out.A @ out.B.T, dense.memit(K, R, C, lam)) < 1e-8


# --- conditioning: the same behaviour as the plain path ---------------------------------------


def test_duplicate_keys_are_named_by_label():
    K, R, C = problem(4)
    K[:, 3] = K[:, 1]
    with pytest.raises(IllConditionedError) as err:
        solver("emmet", C, emmet_lambda=0.0).solve(K, R, labels=[11, 22, 33, 44])
    assert "records 22 and 44" in str(err.value) and "unique_subjects" in str(err.value)


def test_a_key_repeating_an_earlier_batch_is_named():
    K, R, C = problem(3)
    alpha = solver("alphaedit", C, alphaedit_l2=0.0, nullspace_threshold=10.0)  # P = I: no ridge, no projection
    memory = KeyMemory()
    memory.absorb(K[:, 1:2], alpha.transform(K[:, 1:2]))
    with pytest.raises(IllConditionedError, match="records 22 and earlier-batch key 0"):
        alpha.solve(K, R, memory=memory, labels=[11, 22, 33])


@pytest.mark.parametrize("mode", ["ridge", "pinv"])
def test_small_system_fallbacks_warn_and_stay_finite(mode, caplog):
    K, R, C = problem(4)
    K[:, 3] = K[:, 1]
    with caplog.at_level(logging.WARNING, logger="editscale.algorithms"):
        emmet = prepare(algorithms.get("emmet"), C, {**SETTINGS, "emmet_lambda": 0.0}, on_ill_conditioned=mode)
        solved = emmet.solve(K, R)
    assert torch.isfinite(solved.A @ solved.B.T).all() and solved.diagnostics["fallback"] == mode
    assert any(mode in r.getMessage() for r in caplog.records)
    plain = dense.emmet(K, R, C, 0.0, on_ill_conditioned=mode)
    assert rel(solved.A @ solved.B.T, plain) < 1e-6


def test_ill_conditioned_C_is_refused_once_at_prepare_or_regularised():
    K, R, C = problem(3)
    C = C.clone()
    C[:, 0] = C[0] = 0.0  # singular
    with pytest.raises(IllConditionedError, match="C is ill-conditioned.*second moment"):
        solver("memit", C)
    for mode in ("ridge", "pinv"):
        memit = prepare(algorithms.get("memit"), C, SETTINGS, on_ill_conditioned=mode)
        out = memit.solve(K, R)
        assert torch.isfinite(out.B).all() and out.diagnostics["fallback_C"] == mode
        assert math.isinf(out.diagnostics["condition_C"])


def test_rome_zero_key_and_batches_are_refused():
    K, R, C = problem(2)
    rome = solver("rome", C)
    with pytest.raises(IllConditionedError, match="record 7 has a zero key"):
        rome.solve(torch.zeros(D_IN, 1, dtype=torch.float64), R[:, :1], labels=[7])
    with pytest.raises(ValueError, match="1 fact at a time"):
        rome.solve(K, R)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_inputs_labels_and_modes_are_refused(bad):
    K, R, C = problem(3)
    broken = C.clone()
    broken[0, 0] = bad
    with pytest.raises(ValueError, match="^C has non-finite"):
        solver("memit", broken)
    K[0, 0] = bad
    with pytest.raises(ValueError, match="^K has non-finite"):
        solver("memit", C).solve(K, R)
    with pytest.raises(ValueError, match="3 labels for 2 keys"):
        solver("memit", C).solve(K[:, 1:], R[:, 1:], labels=[1, 2, 3])
    with pytest.raises(ValueError, match="on_ill_conditioned"):
        prepare(algorithms.get("memit"), C, SETTINGS, on_ill_conditioned="ignore")


def test_large_systems_with_a_ridge_get_a_bound_no_smaller_than_kappa(monkeypatch):
    K, R, C = problem(6)
    exact = solver("memit", C).solve(K, R).diagnostics["condition"]
    monkeypatch.setattr(prepared_module, "EXACT_CONDITION_SIZE", 2)
    bounded = solver("memit", C).solve(K, R)
    assert bounded.diagnostics["condition"] >= exact * (1 - 1e-12)
    assert rel(bounded.A @ bounded.B.T, dense.memit(K, R, C, SETTINGS["mom2_update_weight"])) < 1e-8


def test_the_registry_reads_only_declared_edit_settings():
    fields = set(EditSettings.__dataclass_fields__)
    for algorithm in algorithms.ALGORITHMS.values():
        assert set(algorithm.settings) <= fields, algorithm.name
        cfg = editing.EditConfig(algorithm.name, 1)
        assert set(cfg.settings()) == set(algorithm.settings)
    with pytest.raises(ValueError, match="not one of"):
        algorithms.get("fine-tuning")


def test_nearly_parallel_keys_are_named_even_when_well_conditioned(caplog):
    K, R, C = problem(3)
    K[:, 2] = K[:, 0] + 0.05 * K[:, 1] / K[:, 1].norm() * K[:, 0].norm()  # |cos| ≈ 0.999
    with caplog.at_level(logging.WARNING, logger="editscale.algorithms"):
        out = solver("memit", C).solve(K, R, labels=[5, 6, 7])
    assert torch.isfinite(out.B).all() and out.diagnostics["condition"] < 1e6
    assert "nearly parallel" in caplog.text and "records 5 and 7" in caplog.text


def test_a_variant_names_its_overrides_one_way_and_refuses_what_its_algorithm_does_not_read():
    emmet, overrides = algorithms.variant("emmet@emmet_lambda=1")
    assert emmet is algorithms.ALGORITHMS["emmet"] and overrides == {"emmet_lambda": 1.0}
    assert algorithms.variant("memit") == (algorithms.ALGORITHMS["memit"], {})
    assert algorithms.variant_name("encore", {"update_norm_lambda": 1, "mom2_update_weight": 50.0}) \
        == "encore@mom2_update_weight=50,update_norm_lambda=1"  # name order, %g values
    with pytest.raises(ValueError, match="written 'emmet@emmet_lambda=1'"):
        algorithms.variant("emmet@emmet_lambda=1.0")  # the same setting, another path: refused
    with pytest.raises(ValueError, match="memit reads .*mom2_update_weight"):
        algorithms.variant("memit@emmet_lambda=1")  # MEMIT never reads ε
    with pytest.raises(ValueError, match="rome reads .*no edit settings"):
        algorithms.variant("rome@mom2_update_weight=1")
    with pytest.raises(ValueError, match="is not a number"):
        algorithms.variant("emmet@emmet_lambda=big")
    with pytest.raises(ValueError, match="not one of"):
        algorithms.variant("memitt@mom2_update_weight=1")


def test_emmet_at_unit_epsilon_is_memits_update():
    """EMMET's ridge is λε on KᵀC⁻¹K and MEMIT's is λ (Woodbury: (λC + KKᵀ)⁻¹K = C⁻¹K(KᵀC⁻¹K + λI)⁻¹),
    so emmet@emmet_lambda=1 must give the textbook MEMIT ΔW, and the default ε = 0.1 must not."""
    g = torch.Generator().manual_seed(3)
    X = torch.randn(D_IN, 4 * D_IN, generator=g, dtype=torch.float64)
    C = X @ X.T / X.shape[1]
    K, R = torch.randn(D_IN, 12, generator=g, dtype=torch.float64), torch.randn(D_OUT, 12, generator=g,
                                                                                   dtype=torch.float64)
    want = dense.memit(K, R, C, mom2_update_weight=15.0)
    algorithm, overrides = algorithms.variant("emmet@emmet_lambda=1")
    settings = {**SETTINGS, **overrides}
    got = prepare(algorithm, C, {k: settings[k] for k in algorithm.settings}).solve(K, R)
    assert rel(got.A @ got.B.T, want) < 1e-10
    default = prepare(algorithm, C, {k: SETTINGS[k] for k in algorithm.settings}).solve(K, R)
    assert rel(default.A @ default.B.T, want) > 1e-3
