"""Weight health against torch's own matrix functions: the Gram-matrix shortcut must give the same numbers."""

import math

import pytest
import torch

from editscale.editing.health import singular_values, weight_health


@pytest.mark.parametrize("shape", [(12, 30), (30, 12)])
def test_singular_values_equal_svdvals(shape):
    M = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    expected = torch.linalg.svdvals(M.double()).flip(0)
    assert torch.allclose(singular_values(M), expected, rtol=1e-9, atol=1e-9)


def test_weight_health_matches_norms_and_condition():
    g = torch.Generator().manual_seed(1)
    W0 = torch.randn(16, 40, generator=g)
    delta = torch.randn(16, 3, generator=g) @ torch.randn(3, 40, generator=g) * 0.1  # low rank, as an edit is
    W = W0 + delta
    health = weight_health(float(W0.double().norm()), W, delta)
    assert health["delta_relative"] == pytest.approx(float(delta.double().norm() / W0.double().norm()), rel=1e-12)
    assert health["delta_spectral"] == pytest.approx(float(torch.linalg.matrix_norm(delta.double(), ord=2)), rel=1e-9)
    assert health["weight_norm"] == pytest.approx(float(W.double().norm()), rel=1e-12)
    assert health["weight_condition"] == pytest.approx(float(torch.linalg.cond(W.double())), rel=1e-8)


def test_a_rank_deficient_weight_has_infinite_condition():
    W = torch.zeros(4, 6)
    W[0, 0] = 1.0
    assert weight_health(1.0, W, W)["weight_condition"] == math.inf
