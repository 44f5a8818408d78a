"""Property-based: finite input gives finite output and gradients, for every grouping, op and dtype."""
import torch
from hypothesis import assume, given, settings, strategies as st

import ibnorm

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
OPS = ["power", "log", "tanh", "none"]
RANGES = {"power": (0.01, 1.0), "log": (0.01, 20.0), "tanh": (0.01, 20.0)}


@st.composite
def layer_cases(draw):
    op = draw(st.sampled_from(OPS))
    strength = None if op == "none" else draw(st.floats(*RANGES[op]))
    grouping = draw(st.sampled_from(["layer", "rms", "group", "batch1d", "batch2d"]))
    dtype = draw(st.sampled_from(DTYPES))
    n = draw(st.integers(2, 5))
    c = draw(st.integers(1, 4)) * 2
    k = draw(st.integers(1, 9))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    learnable = draw(st.booleans()) and op != "none"
    return op, strength, grouping, dtype, (n, c, k), scale, learnable


def build(grouping, channels, feat, **kw):
    if grouping == "layer":
        return ibnorm.IBLayerNorm(feat, **kw)
    if grouping == "rms":
        return ibnorm.IBRMSNorm(feat, **kw)
    if grouping == "group":
        return ibnorm.IBGroupNorm(2, channels, **kw)
    if grouping == "batch1d":
        return ibnorm.IBBatchNorm1d(channels, **kw)
    return ibnorm.IBBatchNorm2d(channels, **kw)


@settings(max_examples=150, deadline=None)
@given(layer_cases(), st.integers(0, 2**31 - 1))
def test_finite_in_finite_out(case, seed):
    op, strength, grouping, dtype, (n, c, k), scale, learnable = case
    g = torch.Generator().manual_seed(seed)
    m = build(grouping, c, k, compression=op, strength=strength, learnable_strength=learnable, dtype=dtype)
    shape = (n, c, k, 2) if grouping == "batch2d" else (n, c, k)
    x = (torch.randn(shape, generator=g) * torch.randn(shape, generator=g).exp() * scale).to(dtype)
    assume(torch.isfinite(x).all())  # the claim is about finite input
    x.requires_grad_(True)
    y = m(x)
    assert y.dtype == dtype and y.shape == x.shape
    assert torch.isfinite(y).all()
    y.float().square().sum().backward()
    assert torch.isfinite(x.grad).all()
    for p in m.parameters():
        assert torch.isfinite(p.grad).all()
