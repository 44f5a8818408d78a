"""The Triton kernels, run on CPU by Triton's interpreter (TRITON_INTERPRET=1) against the reference.

Skipped when the optional ``triton`` package is not installed; CI installs it and sets IBNORM_REQUIRE_TRITON=1."""
import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import skip_reason

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason=skip_reason("triton", "triton not installed (scripts/setup.sh installs it)"))

SCRIPT = textwrap.dedent(r'''
    import torch, ibnorm
    from ibnorm.kernels.triton_rows import ib_rows
    torch.manual_seed(0)
    for op, lam in (("power", 0.7), ("log", 1.3), ("tanh", 0.6), ("none", None)):
        for centered in (True, False):
            for order in ibnorm.ORDERS:
                for shape in ((3, 37), (2, 5, 64)):
                    m = shape[-1]
                    x = (torch.randn(shape) * torch.randn(shape).exp() + 1).requires_grad_(True)
                    w = (torch.rand(m) + 0.5).requires_grad_(True)
                    b = (torch.randn(m) if centered else None)
                    if b is not None:
                        b.requires_grad_(True)
                    lam_t = torch.tensor(lam, requires_grad=True) if lam is not None else None
                    gy = torch.randn(shape)
                    y = ib_rows(x, w, b, lam_t, m, centered, 1e-5, op, order == "compress_then_standardize")
                    y.backward(gy)
                    got = [y.detach(), x.grad, w.grad] + ([b.grad] if b is not None else []) + ([lam_t.grad] if lam_t is not None else [])
                    xr = x.detach().clone().requires_grad_(True); wr = w.detach().clone().requires_grad_(True)
                    br = b.detach().clone().requires_grad_(True) if b is not None else None
                    lr = lam_t.detach().clone().requires_grad_(True) if lam_t is not None else None
                    from ibnorm import reference as F
                    kw = dict(compression=op, strength=lr, order=order)
                    yr = F.ib_layer_norm(xr, m, wr, br, 1e-5, **kw) if centered else F.ib_rms_norm(xr, m, wr, 1e-5, **kw)
                    yr.backward(gy)
                    want = [yr.detach(), xr.grad, wr.grad] + ([br.grad] if br is not None else []) + ([lr.grad] if lr is not None else [])
                    for a, e in zip(got, want):
                        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4, msg=f"{op} {centered} {order} {shape}")
    from ibnorm.kernels import triton_rows
    from ibnorm.ops import COMPRESSIONS
    u = torch.cat([torch.linspace(-9, 9, 1999), torch.tensor([0.0, 1e-7, -1e-7, 40.0, -40.0])])
    for name, entry in COMPRESSIONS.items():  # the Triton op codes compute the op table's formulas
        for lam in ((0.3, 1.5) if entry.has_strength else (1.0,)):
            got = triton_rows.op_terms(u, name, lam)
            want = entry.terms(u.double(), lam, True)
            for g, w in zip(got, want):
                torch.testing.assert_close(g.double(), w, rtol=2e-5, atol=2e-6, msg=f"terms {name} {lam}")
    # create_graph=True: a gradient penalty's parameter gradients, through the kernel and through the reference
    x = (torch.randn(4, 16) * 1.5 + 0.5).requires_grad_(True)
    w = (torch.rand(16) + 0.5).requires_grad_(True)
    lam_t = torch.tensor(0.6, requires_grad=True)
    def penalty(fn):
        y = fn(x)
        (gx,) = torch.autograd.grad((y * y).sum(), x, create_graph=True)
        return torch.autograd.grad((gx * gx).sum(), [w, lam_t])
    got = penalty(lambda x: ib_rows(x, w, None, lam_t, 16, False, 1e-5, "tanh", True))
    want = penalty(lambda x: F.ib_rms_norm(x, 16, w, 1e-5, compression="tanh", strength=lam_t))
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-3, atol=1e-4, msg="double backward")
    print("triton interpreter: all equal")
''')


def test_triton_kernels_match_reference_in_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "all equal" in proc.stdout
