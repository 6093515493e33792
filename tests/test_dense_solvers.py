"""The plain path (each update's textbook d_in × d_in formula) on random problems: constraints,
limits, identities and conditioning. The prepared solvers are tested against it in test_algorithms.py."""

import logging
import math

import pytest
import torch

from editscale.algorithms import MAX_CONDITION, IllConditionedError
from editscale.algorithms import dense as solvers

D_IN, D_OUT, N = 24, 16, 5
LABELS = [11, 22, 33, 44]


def problem(n=N, dtype=torch.float64, seed=0):
    """Keys K, residuals R and a well-conditioned C = AAᵀ/m + 0.1 I from m = 200 > d_in samples."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(D_IN, 200, generator=g, dtype=torch.float64)
    C = A @ A.T / 200 + 0.1 * torch.eye(D_IN, dtype=torch.float64)
    K = torch.randn(D_IN, n, generator=g, dtype=torch.float64)
    R = torch.randn(D_OUT, n, generator=g, dtype=torch.float64)
    return K.to(dtype), R.to(dtype), C.to(dtype)


def with_null_space(n_small=4, seed=1):
    """C = U diag(eigs) Uᵀ with `n_small` eigenvalues of 1e-4, below AlphaEdit's 1e-2 threshold."""
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(D_IN, D_IN, generator=g, dtype=torch.float64))
    eigs = torch.cat([torch.full((n_small,), 1e-4, dtype=torch.float64),
                      torch.linspace(0.5, 2.0, D_IN - n_small, dtype=torch.float64)])
    return U @ torch.diag(eigs) @ U.T


def duplicated():
    """Four keys whose columns 1 and 3 are identical, with different residuals."""
    K, R, C = problem(n=4)
    K[:, 3] = K[:, 1]
    return K, R, C


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


def test_rome_makes_the_key_give_the_new_value():
    K, R, C = problem()
    k, r = K[:, 0], R[:, 0]
    W = torch.randn(D_OUT, D_IN, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    delta = solvers.rome(k, r, C)
    assert relative_error((W + delta) @ k, W @ k + r) < 1e-5
    assert relative_error(delta @ k, r) < 1e-5


def test_rome_in_float32_returns_float32():
    K, R, C = problem(dtype=torch.float32)
    delta = solvers.rome(K[:, 0], R[:, 0], C)
    assert delta.dtype == torch.float32 and delta.shape == (D_OUT, D_IN)
    assert relative_error(delta @ K[:, 0], R[:, 0]) < 1e-5


def test_emmet_without_ridge_meets_every_constraint():
    K, R, C = problem()
    assert relative_error(solvers.emmet(K, R, C, 0.0) @ K, R) < 1e-5


def test_emmet_for_one_edit_without_ridge_is_rome():
    K, R, C = problem(n=1)
    torch.testing.assert_close(solvers.emmet(K, R, C, 0.0), solvers.rome(K[:, 0], R[:, 0], C))


def test_emmet_ridge_loosens_the_constraints():
    K, R, C = problem()
    assert relative_error(solvers.emmet(K, R, C, 10.0) @ K, R) > 1e-3


def test_memit_vanishes_as_the_covariance_weight_grows():
    K, R, C = problem()
    norms = [float(solvers.memit(K, R, C, lam).norm()) for lam in (1.0, 1e2, 1e4, 1e6)]
    assert all(a > b for a, b in zip(norms, norms[1:]))
    assert norms[-1] < 1e-4 * norms[0]


def test_memit_matches_the_naive_closed_form():
    K, R, C = problem()
    naive = R @ K.T @ torch.linalg.inv(15.0 * C + K @ K.T)
    torch.testing.assert_close(solvers.memit(K, R, C, 15.0), naive, rtol=1e-9, atol=1e-12)


def test_memit_equals_emmet_with_the_same_ridge():
    """Kᵀ(λC + KKᵀ)⁻¹ = (λI + KᵀC⁻¹K)⁻¹KᵀC⁻¹ (push-through identity): two different solves, one answer."""
    K, R, C = problem()
    torch.testing.assert_close(solvers.memit(K, R, C, 0.3), solvers.emmet(K, R, C, 0.3), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(solvers.memit(K, R, C, 0.3), solvers.emmet(K, R, C, 0.1, 3.0), rtol=1e-9, atol=1e-12)


def test_emmet_scales_C_as_the_reference_does():
    """unified-model-editing's EMMET multiplies C by mom2_update_weight λ, then solves
    R (Kᵀ(λC)⁻¹K + εI)⁻¹ Kᵀ(λC)⁻¹; ε is added only for a batch (n > 1)."""
    K, R, C = problem()
    lam, eps = 15.0, 0.1
    Cl = lam * C.double()
    Cinv_K = torch.linalg.solve(Cl, K.double())
    naive = R.double() @ torch.linalg.solve(K.double().T @ Cinv_K + eps * torch.eye(K.shape[1], dtype=torch.float64),
                                            Cinv_K.T)
    torch.testing.assert_close(solvers.emmet(K, R, C, eps, lam).double(), naive, rtol=1e-6, atol=1e-9)
    one = solvers.emmet(K[:, :1], R[:, :1], C, eps, lam)
    torch.testing.assert_close(one, solvers.rome(K[:, 0], R[:, 0], C))  # no ε for a single edit


def test_nullspace_projector_is_an_orthogonal_projector_of_the_right_rank():
    C = with_null_space(n_small=4)
    P = solvers.nullspace_projector(C, threshold=1e-2)
    torch.testing.assert_close(P, P.T)
    torch.testing.assert_close(P @ P, P)
    assert torch.linalg.matrix_rank(P) == 4 == int((torch.linalg.eigvalsh(C) < 1e-2).sum())
    assert float((P @ C).norm()) < 1e-3  # C has almost nothing in the null space


def test_alphaedit_leaves_the_preserved_subspace_alone():
    K, R, _ = problem()
    C = with_null_space(n_small=4)
    P = solvers.nullspace_projector(C)
    K_prev = problem(n=3, seed=2)[0]
    delta = solvers.alphaedit(K, R, P, K_prev, l2=1.0)
    P_perp = torch.eye(D_IN, dtype=torch.float64) - P
    assert float(delta.norm()) > 1e-3
    assert float((delta @ P_perp).norm()) < 1e-10 * float(delta.norm())


def test_alphaedit_matches_the_naive_closed_form():
    K, R, _ = problem()
    P = solvers.nullspace_projector(with_null_space(n_small=6))
    K_prev = problem(n=3, seed=2)[0]
    K_all = torch.cat([K, K_prev], dim=1)
    naive = (torch.linalg.inv(P @ K_all @ K_all.T + 0.5 * torch.eye(D_IN, dtype=torch.float64)) @ P @ K @ R.T).T
    torch.testing.assert_close(solvers.alphaedit(K, R, P, K_prev, l2=0.5), naive, rtol=1e-9, atol=1e-12)


def test_alphaedit_without_earlier_keys_accepts_none_or_empty():
    K, R, _ = problem()
    P = solvers.nullspace_projector(with_null_space())
    empty = torch.zeros(D_IN, 0, dtype=torch.float64)
    torch.testing.assert_close(solvers.alphaedit(K, R, P, None), solvers.alphaedit(K, R, P, empty))


def test_duplicate_keys_are_named_by_label():
    K, R, C = duplicated()
    with pytest.raises(IllConditionedError) as err:
        solvers.emmet(K, R, C, 0.0, labels=LABELS)
    message = str(err.value)
    assert "records 22 and 44" in message and "unique_subjects" in message and "ridge" in message
    assert message.count("parallel keys") == 1  # only the one pair is blamed


def test_duplicate_keys_without_labels_are_named_by_column():
    K, R, C = duplicated()
    with pytest.raises(IllConditionedError, match="column 1 and column 3"):
        solvers.emmet(K, R, C, 0.0)


@pytest.mark.parametrize("mode", ["ridge", "pinv"])
def test_fallbacks_return_a_finite_least_squares_answer_and_warn(mode, caplog):
    K, R, C = duplicated()
    diagnostics = {}
    with caplog.at_level(logging.WARNING, logger="editscale.algorithms"):
        delta = solvers.emmet(K, R, C, 0.0, labels=LABELS, on_ill_conditioned=mode, diagnostics=diagnostics)
    assert torch.isfinite(delta).all()
    assert diagnostics["fallback"] == mode and diagnostics["condition"] > MAX_CONDITION
    assert any("condition" in rec.getMessage() and mode in rec.getMessage() for rec in caplog.records)
    # the conflicting pair gets the mean of its two residuals, the others are met exactly
    change = delta @ K
    assert relative_error(change[:, [0, 2]], R[:, [0, 2]]) < 1e-4
    assert relative_error(change[:, 1], (R[:, 1] + R[:, 3]) / 2) < 1e-4


def test_rome_with_a_zero_key_raises_or_falls_back_to_no_change():
    K, R, C = problem()
    k = torch.zeros(D_IN, dtype=torch.float64)
    with pytest.raises(IllConditionedError, match="record 7 has a zero key"):
        solvers.rome(k, R[:, 0], C, labels=[7])
    for mode in ("ridge", "pinv"):
        assert torch.equal(solvers.rome(k, R[:, 0], C, on_ill_conditioned=mode), torch.zeros(D_OUT, D_IN).double())


def test_condition_above_the_limit_without_duplicates_names_the_numbers():
    K, R, C = problem()
    with pytest.raises(IllConditionedError, match=r"max_condition 10\b.*no duplicate or zero keys"):
        solvers.memit(K, R, C, 1.0, max_condition=10.0)


def test_memit_without_the_covariance_term_is_singular_for_few_keys():
    """λ = 0 leaves KKᵀ of rank n < d_in: its smallest eigenvalues are round-off, some negative."""
    K, R, C = problem()
    with pytest.raises(IllConditionedError, match="no duplicate or zero keys"):
        solvers.memit(K, R, C, 0.0)
    assert torch.isfinite(solvers.memit(K, R, C, 0.0, on_ill_conditioned="pinv")).all()


def test_labels_must_match_the_keys():
    K, R, C = problem()
    with pytest.raises(ValueError, match="3 labels for 5 keys"):
        solvers.emmet(K, R, C, 0.1, labels=[1, 2, 3])


@pytest.mark.parametrize("name", ["K", "R", "C"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_input_is_refused_by_name(name, bad):
    K, R, C = problem()
    tensors = {"K": K, "R": R, "C": C}
    tensors[name] = tensors[name].clone()
    tensors[name][0, 0] = bad
    for solve in (solvers.memit, solvers.emmet):
        with pytest.raises(ValueError, match=f"^{name} has non-finite"):
            solve(tensors["K"], tensors["R"], tensors["C"], 0.1)


def test_unknown_fallback_is_refused():
    K, R, C = problem()
    with pytest.raises(ValueError, match="on_ill_conditioned"):
        solvers.memit(K, R, C, 1.0, on_ill_conditioned="ignore")


def all_solvers(K, R, C, **kw):
    P = solvers.nullspace_projector(with_null_space().to(C.dtype))
    return {
        "rome": solvers.rome(K[:, 0], R[:, 0], C, **kw),
        "memit": solvers.memit(K, R, C, 1.0, **kw),
        "emmet": solvers.emmet(K, R, C, 0.1, **kw),
        "alphaedit": solvers.alphaedit(K, R, P, K, 1.0, **kw),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_outputs_keep_dtype_device_and_shape(dtype):
    K, R, C = problem(dtype=dtype)
    for name, delta in all_solvers(K, R, C).items():
        assert delta.dtype == dtype and delta.device == K.device and delta.shape == (D_OUT, D_IN), name
        assert torch.isfinite(delta).all(), name


@pytest.mark.parametrize("name", ["rome", "memit", "emmet", "alphaedit"])
def test_diagnostics_report_a_finite_condition(name):
    K, R, C = problem()
    diagnostics = {"fallback": "stale"}
    P = solvers.nullspace_projector(with_null_space())
    call = {"rome": lambda: solvers.rome(K[:, 0], R[:, 0], C, diagnostics=diagnostics),
            "memit": lambda: solvers.memit(K, R, C, 1.0, diagnostics=diagnostics),
            "emmet": lambda: solvers.emmet(K, R, C, 0.1, diagnostics=diagnostics),
            "alphaedit": lambda: solvers.alphaedit(K, R, P, None, 1.0, diagnostics=diagnostics)}[name]
    call()
    assert math.isfinite(diagnostics["condition"]) and diagnostics["condition"] >= 1.0
    assert diagnostics["fallback"] is None
    if name in ("rome", "emmet"):  # they also solve with C
        torch.testing.assert_close(diagnostics["condition_C"], float(torch.linalg.cond(C)))


def test_factored_form_multiplies_out_to_the_dense_update():
    K, R, C = problem()
    P = solvers.nullspace_projector(with_null_space(), 1e-2)
    cases = {
        "rome": lambda **kw: solvers.rome(K[:, 0], R[:, 0], C, **kw),
        "memit": lambda **kw: solvers.memit(K, R, C, 10.0, **kw),
        "emmet": lambda **kw: solvers.emmet(K, R, C, 0.1, **kw),
        "alphaedit": lambda **kw: solvers.alphaedit(K, R, P, K[:, :2], 1.0, **kw),
    }
    for name, solve in cases.items():
        A, B = solve(factored=True)
        assert A.shape[0] == D_OUT and B.shape[0] == D_IN and A.shape[1] == B.shape[1], name
        assert relative_error(A @ B.T, solve()) < 1e-10, name
