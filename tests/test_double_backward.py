"""Gradients of gradients (create_graph=True) through every kernel: gradgradcheck in float64 for every grouping
through what ``impl="auto"`` picks, and a gradient penalty through the C++ kernel against the reference."""
import pytest
import torch

import ibnorm
from ibnorm.kernels import cpu

GROUPINGS = {
    "layer": (lambda **kw: ibnorm.IBLayerNorm(6, **kw), (3, 4, 6)),
    "rms": (lambda **kw: ibnorm.IBRMSNorm(6, **kw), (3, 4, 6)),
    "group": (lambda **kw: ibnorm.IBGroupNorm(2, 6, **kw), (3, 6, 2, 2)),
    "batch": (lambda **kw: ibnorm.IBBatchNorm2d(6, **kw), (4, 6, 2, 2)),
}


def _randomize(layer):
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name in ("weight", "bias"):
                p.uniform_(0.5, 1.5)


@pytest.mark.parametrize("grouping", list(GROUPINGS))
@pytest.mark.parametrize("op", ["power", "log", "tanh"])
def test_gradgradcheck_in_float64_through_auto(grouping, op):
    make, shape = GROUPINGS[grouping]
    layer = make(compression=op, learnable_strength=True, dtype=torch.float64)
    _randomize(layer)
    params = [p for p in layer.parameters()]
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    def f(x, *ps):
        return torch.func.functional_call(layer, dict(zip([n for n, _ in layer.named_parameters()], ps)), (x,))
    assert torch.autograd.gradgradcheck(f, (x, *params), eps=1e-6, atol=1e-5, rtol=1e-4)


def _penalty_grads(layer, x):
    """The parameter gradients of a gradient penalty ||d(sum y^2)/dx||^2 (needs the second derivative)."""
    x = x.clone().requires_grad_()
    y = layer(x)
    (gx,) = torch.autograd.grad((y * y).sum(), x, create_graph=True)
    penalty = (gx * gx).sum()
    return torch.autograd.grad(penalty, [p for p in layer.parameters()])


@pytest.mark.parametrize("grouping", list(GROUPINGS))
@pytest.mark.parametrize("op", ["power", "tanh"])
def test_a_gradient_penalty_through_the_cpp_kernel_matches_the_reference(grouping, op):
    if not cpu.available():
        pytest.skip(f"[ext] the C++ kernel is not built: {cpu._failed}")
    make, shape = GROUPINGS[grouping]
    torch.manual_seed(0)
    x = torch.randn(*shape) * 2 + 0.5
    fast, ref = make(compression=op, learnable_strength=True, impl="cpu"), make(compression=op, learnable_strength=True,
                                                                               impl="reference")
    _randomize(fast)
    ref.load_state_dict(fast.state_dict())
    for a, b in zip(_penalty_grads(fast, x), _penalty_grads(ref, x)):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=2e-3)


def test_the_base_norm_penalty_is_matched_at_the_identity():
    """At the identity op the layer is the torch norm, so a gradient penalty's gradients must be torch's."""
    if not cpu.available():
        pytest.skip(f"[ext] the C++ kernel is not built: {cpu._failed}")
    torch.manual_seed(1)
    x = torch.randn(5, 8)
    base, ib = torch.nn.LayerNorm(8), ibnorm.IBLayerNorm(8, compression="none", impl="cpu")
    _randomize(base)
    ib.load_state_dict(base.state_dict(), strict=False)
    for a, b in zip(_penalty_grads(ib, x), _penalty_grads(base, x)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)
