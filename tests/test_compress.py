import math

import numpy as np
import pytest
import torch

from ibnorm.compress import (COMPRESSIONS, compress, get_compression, raw_to_strength, resolve_strength,
                             strength_to_raw)
from spec_reference import S
from conftest import OPS, STRENGTHS


@pytest.mark.parametrize("op", OPS)
def test_formula_matches_spec_transcription(op):
    u = torch.linspace(-12, 12, 2001, dtype=torch.float64)
    for lam in STRENGTHS[op] + [COMPRESSIONS[op].default]:
        got = compress(u, op, lam).numpy()
        np.testing.assert_allclose(got, S[op](u.numpy(), lam), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op", OPS)
def test_spec_properties(op):
    u = torch.linspace(-6, 6, 2401, dtype=torch.float64, requires_grad=True)
    for lam in STRENGTHS[op]:
        c = compress(u, op, lam)
        (d,) = torch.autograd.grad(c.sum(), u)
        assert torch.allclose(compress(-u, op, lam), -c)  # odd
        assert (torch.diff(c) > 0).all()  # increasing
        assert ((d > 0) & (d <= 1 + 1e-12)).all()  # 0 < s' <= 1
        assert (c.abs() <= u.abs() + 1e-12).all()  # contracts toward the centre


@pytest.mark.parametrize("op", OPS)
def test_derivative_at_zero_is_one(op):
    # autograd of sign(u) * g(|u|) gives 0 at u = 0; the SPEC says s'(0) = 1
    u = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    (d,) = torch.autograd.grad(compress(u, op, 0.7).sum(), u)
    assert torch.allclose(d, torch.ones(3, dtype=torch.float64))


def test_identity_limits():
    u = torch.linspace(-5, 5, 101, dtype=torch.float64)
    assert torch.allclose(compress(u, "power", 1.0), u, atol=1e-12)
    assert torch.allclose(compress(u, "log", 1e-7), u, atol=1e-5)
    assert torch.allclose(compress(u, "tanh", 1e-5), u, atol=1e-6)
    # power tends to log with lambda = 1 as its lambda -> 0
    assert torch.allclose(compress(u, "power", 1e-7), compress(u, "log", 1.0), atol=1e-5)
    assert compress(u, "tanh", 2.0).abs().max() < 0.5  # only tanh bounds the output


def test_strength_ranges_and_errors():
    assert resolve_strength("power", None) == 0.5
    assert resolve_strength("power", 1.0) == 1.0
    assert resolve_strength("none", None) is None
    for op, bad in [("power", 0.0), ("power", 1.01), ("log", 0.0), ("tanh", -1.0), ("log", math.inf), ("tanh", math.nan)]:
        with pytest.raises(ValueError, match="strength"):
            resolve_strength(op, bad)
    with pytest.raises(TypeError, match="strength"):
        resolve_strength("tanh", "big")
    with pytest.raises(ValueError, match="compression"):
        get_compression("cube")
    with pytest.raises(ValueError, match="strength"):
        resolve_strength("none", 0.5)


@pytest.mark.parametrize("op", OPS)
def test_learnable_reparameterization_round_trip_and_range(op):
    for lam in STRENGTHS[op]:
        raw = torch.tensor(strength_to_raw(op, lam), dtype=torch.float64)
        assert math.isclose(float(raw_to_strength(op, raw)), lam, rel_tol=1e-9)
    for raw in (-50.0, 0.0, 50.0):
        assert get_compression(op).contains(float(raw_to_strength(op, torch.tensor(raw, dtype=torch.float64)))) or raw == -50.0
