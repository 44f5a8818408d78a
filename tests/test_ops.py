import math

import numpy as np
import pytest
import torch

from ibnorm.ops import (COMPRESSIONS, LEARNABLE_FLOOR, compress, get_compression, raw_to_strength,
                        resolve_strength, strength_to_raw)
from spec_reference import S
from conftest import OPS, STRENGTHS, skip_reason


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
    # autograd of sign(u) * g(|u|) gives 0 at u = 0; the definition says s'(0) = 1
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
        lam = float(raw_to_strength(op, torch.tensor(raw, dtype=torch.float64)))
        assert get_compression(op).contains(lam) and lam >= LEARNABLE_FLOOR, (raw, lam)
    # however negative the raw value, the strength stays at the floor, away from 0 (where s = (...) / lam is 0/0)
    assert float(raw_to_strength(op, torch.tensor(-1e4, dtype=torch.float64))) == pytest.approx(LEARNABLE_FLOOR)


# --- the op table is the one source: its derivatives, and the compiled kernels' codes and formulas ----------

U_VALUES = torch.cat([torch.linspace(-9, 9, 1999, dtype=torch.float64), torch.tensor([0.0, 1e-7, -1e-7, 40.0, -40.0],
                                                                                     dtype=torch.float64)])


@pytest.mark.parametrize("op", list(COMPRESSIONS))
def test_table_terms_are_s_and_its_derivatives(op):
    """``terms`` gives s, ds/du and ds/dlam of the reference ``s``, checked against autograd in float64."""
    entry = COMPRESSIONS[op]
    lams = STRENGTHS[op] if entry.has_strength else [1.0]
    for lam in lams:
        u = U_VALUES.clone().requires_grad_(True)
        lam_t = torch.tensor(lam, dtype=torch.float64, requires_grad=True)
        s_ref = entry.s(u, lam_t)
        du, = torch.autograd.grad(s_ref.sum(), u, retain_graph=True)
        s, ds, dlam = entry.terms(u.detach(), lam, True)
        torch.testing.assert_close(s, s_ref.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ds, du, rtol=1e-10, atol=1e-12)
        if entry.has_strength:
            # ds/dlam per element: the gradient of each s_i with respect to lam
            dl = torch.stack([torch.autograd.grad(s_ref[i], lam_t, retain_graph=True)[0] for i in range(0, len(u), 97)])
            torch.testing.assert_close(dlam[::97], dl, rtol=1e-8, atol=1e-10)
        assert entry.terms(u.detach(), lam, False)[2] is None


def test_kernel_codes_are_distinct_and_in_the_table():
    assert sorted(op.code for op in COMPRESSIONS.values()) == list(range(len(COMPRESSIONS)))


@pytest.mark.parametrize("op", list(COMPRESSIONS))
def test_cpp_kernel_evaluates_the_table_formulas(op):
    """The C++ kernel's op code ``code`` computes this op's s, s' and ds/dlam (vector body and scalar tail)."""
    from ibnorm.kernels import cpu
    ext = cpu.load()
    if ext is None:
        pytest.skip(skip_reason("ext", f"C++ kernel not built here: {cpu._failed}"))
    entry = COMPRESSIONS[op]
    for lam in (STRENGTHS[op] if entry.has_strength else [1.0]):
        u = U_VALUES[:1003].float()  # an odd length: the scalar tail runs too
        got = ext.op_terms(u, entry.code, lam)
        want = entry.terms(u.double(), lam, True)
        for name, g, w in zip(("s", "ds", "dlam"), got, want):
            torch.testing.assert_close(g.double(), w, rtol=2e-5, atol=2e-6, msg=f"{op} {lam} {name}")


@pytest.mark.parametrize("op", list(COMPRESSIONS))
def test_cpp_op_cost_sums_what_the_kernel_evaluates(op):
    """``op_cost`` (the benchmark's floor) evaluates the same s and s' as the kernels, over every element exactly once,
    the odd tail included: its sums match the table formulas."""
    from ibnorm.kernels import cpu
    ext = cpu.load()
    if ext is None:
        pytest.skip(skip_reason("ext", f"C++ kernel not built here: {cpu._failed}"))
    entry = COMPRESSIONS[op]
    u = U_VALUES[:1003].float()
    for lam in (STRENGTHS[op] if entry.has_strength else [1.0]):
        s, ds, _ = entry.terms(u.double(), lam, False)
        n = float(ext.op_cost(u, entry.code, lam, False))
        assert n == pytest.approx(float(s.sum()), rel=1e-4, abs=1e-3), (op, lam)
        assert float(ext.op_cost(u, entry.code, lam, True)) == pytest.approx(float((s + ds).sum()), rel=1e-4, abs=1e-3), (op, lam)
