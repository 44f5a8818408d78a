"""Consequences of the definition (docs/method.md) for every grouping x op, against PyTorch's norms and a float64 transcription."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

import ibnorm
from ibnorm.reference import contraction_ratio
from conftest import OPS, STRENGTHS
import spec_reference as ref

GROUPINGS = ["layer", "rms", "group", "batch1d", "batch2d", "batch3d"]


def make_pair(grouping, dtype=torch.float64, eps=1e-5, **ib):
    """(ibnorm layer, matching torch layer, input shape) with random affine parameters copied across."""
    if grouping == "layer":
        ours, base, shape = ibnorm.IBLayerNorm((5, 7), eps=eps, dtype=dtype, **ib), nn.LayerNorm((5, 7), eps=eps, dtype=dtype), (3, 4, 5, 7)
    elif grouping == "rms":
        ours, base, shape = ibnorm.IBRMSNorm(9, eps=eps, dtype=dtype, **ib), nn.RMSNorm(9, eps=eps, dtype=dtype), (3, 4, 9)
    elif grouping == "group":
        ours, base, shape = ibnorm.IBGroupNorm(3, 6, eps=eps, dtype=dtype, **ib), nn.GroupNorm(3, 6, eps=eps, dtype=dtype), (4, 6, 5, 3)
    else:
        d = int(grouping[-2])
        cls = {1: ibnorm.IBBatchNorm1d, 2: ibnorm.IBBatchNorm2d, 3: ibnorm.IBBatchNorm3d}[d]
        tcls = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[d]
        ours, base = cls(4, eps=eps, dtype=dtype, **ib), tcls(4, eps=eps, dtype=dtype)
        shape = {1: (6, 4, 5), 2: (5, 4, 3, 3), 3: (3, 4, 2, 3, 2)}[d]
    with torch.no_grad():
        for p in base.parameters():
            p.copy_(torch.rand_like(p) + 0.5)
    ours.load_state_dict(base.state_dict(), strict=False)
    return ours, base, shape


def rand_input(shape, dtype=torch.float64, scale=1.0):
    # heavy-tailed values so the compression acts
    x = torch.randn(shape, dtype=dtype) * torch.randn(shape, dtype=dtype).exp()
    return x * scale + 3.0 * scale


@pytest.mark.parametrize("grouping", GROUPINGS)
@pytest.mark.parametrize("ib", [dict(compression="none"), dict(compression="power", strength=1.0)])
@pytest.mark.parametrize("scale,eps", [(1.0, 1e-5), (3e-4, 1e-5), (1.0, 0.3)])
def test_identity_equals_base_norm(grouping, ib, scale, eps):
    ours, base, shape = make_pair(grouping, eps=eps, **ib)
    for step in range(3):  # batch grouping: several train steps update the running stats
        x = rand_input(shape, scale=scale)
        torch.testing.assert_close(ours(x), base(x), rtol=1e-9, atol=1e-9)
    if grouping.startswith("batch"):
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(ours, name), getattr(base, name))
        ours.eval(), base.eval()
        x = rand_input(shape, scale=scale)
        torch.testing.assert_close(ours(x), base(x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("order", ibnorm.ORDERS)
def test_forward_matches_spec_transcription(op, order):
    lam = STRENGTHS[op][0]
    kw = dict(compression=op, strength=lam, order=order, dtype=torch.float64)
    x = rand_input((3, 4, 5, 6))
    ln = ibnorm.IBLayerNorm((5, 6), elementwise_affine=False, **kw)
    np.testing.assert_allclose(ln(x).numpy(), ref.ib_layer(x.numpy(), op, lam, 1e-5, nd=2, order=order), rtol=1e-10, atol=1e-10)
    rms = ibnorm.IBRMSNorm(6, eps=1e-6, elementwise_affine=False, **kw)
    np.testing.assert_allclose(rms(x).numpy(), ref.ib_layer(x.numpy(), op, lam, 1e-6, centered=False, order=order), rtol=1e-10, atol=1e-10)
    gn = ibnorm.IBGroupNorm(2, 4, affine=False, **kw)
    np.testing.assert_allclose(gn(x).numpy(), ref.ib_group_norm(x.numpy(), 2, op, lam, 1e-5, order), rtol=1e-10, atol=1e-10)
    bn = ibnorm.IBBatchNorm2d(4, affine=False, **kw)
    np.testing.assert_allclose(bn(x).numpy(), ref.ib_batch_train(x.numpy(), op, lam, 1e-5, order), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("grouping", ["layer", "rms", "group", "batch2d"])
def test_mean_zero_and_base_variance(op, grouping):
    lam = STRENGTHS[op][1]
    # eps -> 0 so that the eps terms of step 3 (about eps / var(c)) vanish
    ours, base, shape = make_pair(grouping, compression=op, strength=lam, eps=1e-12)
    x = rand_input(shape)
    with torch.no_grad():
        for m in (ours, base):
            if getattr(m, "weight", None) is not None:
                m.weight.fill_(1.0)
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
    z, u = ours(x), base(x)
    dims = {"layer": (-2, -1), "rms": (-1,), "batch2d": (0, 2, 3)}.get(grouping)
    if grouping == "group":
        z, u, dims = z.reshape(4, 3, -1), u.reshape(4, 3, -1), (-1,)
    if grouping == "rms":
        torch.testing.assert_close(z.square().mean(dims), u.square().mean(dims))
    else:
        torch.testing.assert_close(z.mean(dims), torch.zeros_like(z.mean(dims)), atol=1e-12, rtol=0)
        torch.testing.assert_close(z.var(dims, unbiased=False), u.var(dims, unbiased=False), atol=1e-9, rtol=0)
    assert not torch.allclose(z, u, atol=1e-3)  # the op really changed the values


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("grouping", ["layer", "rms", "group", "batch2d"])
def test_shift_and_scale_invariance(op, grouping):
    ours, _, shape = make_pair(grouping, compression=op, strength=STRENGTHS[op][1], eps=1e-12)
    x = rand_input(shape)
    shift = 0.0 if grouping == "rms" else -7.5
    torch.testing.assert_close(ours(x * 13.0 + shift), ours(x), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("op", OPS)
def test_variance_contraction(op):
    x = rand_input((64, 128))
    u = (x - x.mean(-1, keepdim=True)) / x.std(-1, unbiased=False, keepdim=True)
    weak, strong = sorted(STRENGTHS[op], reverse=(op == "power"))  # power compresses more as lambda falls
    r_weak, r_strong = (float(contraction_ratio(u, op, lam, (-1,))) for lam in (weak, strong))
    assert r_strong < r_weak < 1.0
    assert float(contraction_ratio(u, "none", None, (-1,))) == pytest.approx(1.0)


@pytest.mark.parametrize("op", OPS + ["none"])
@pytest.mark.parametrize("grouping", GROUPINGS)
def test_constant_group_gives_zeros_and_finite_grads(op, grouping):
    ours, _, shape = make_pair(grouping, dtype=torch.float32, compression=op)
    with torch.no_grad():
        if getattr(ours, "bias", None) is not None:
            ours.bias.zero_()
    x = torch.full(shape, 0.0 if grouping == "rms" else 2.5, requires_grad=True)
    y = ours(x)
    assert torch.equal(y, torch.zeros_like(y))
    y.backward(torch.randn_like(y))
    assert torch.isfinite(x.grad).all()
    for p in ours.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("grouping", GROUPINGS)
@pytest.mark.parametrize("learnable", [False, True])
def test_gradcheck(op, grouping, learnable):
    ours, _, shape = make_pair(grouping, compression=op, strength=STRENGTHS[op][0], learnable_strength=learnable)
    x = rand_input(shape).requires_grad_(True)
    params = tuple(p for p in ours.parameters())

    def fn(inp, *ps):
        return torch.func.functional_call(ours, {n: p for (n, _), p in zip(ours.named_parameters(), ps)}, (inp,))

    ours.train(grouping.startswith("batch"))
    assert torch.autograd.gradcheck(fn, (x,) + params, eps=1e-6, atol=1e-5)


def test_gradcheck_standardize_then_compress_and_bn_eval():
    for order in ibnorm.ORDERS:
        m = ibnorm.IBLayerNorm(6, dtype=torch.float64, compression="log", strength=0.8, order=order, learnable_strength=True)
        x = rand_input((3, 6)).requires_grad_(True)
        assert torch.autograd.gradcheck(lambda i: m(i), (x,))
        assert torch.autograd.gradcheck(lambda s: torch.func.functional_call(m, {"strength_raw": s}, (x,)), (m.strength_raw.detach().clone().requires_grad_(True),))
    bn = ibnorm.IBBatchNorm2d(4, dtype=torch.float64, compression="tanh", strength=0.9)
    bn(rand_input((5, 4, 3, 3)))
    bn.eval()
    assert torch.autograd.gradcheck(lambda i: bn(i), (rand_input((2, 4, 3, 3)).requires_grad_(True),))


class TestBatchRunningStats:
    def test_train_updates_all_buffers_and_eval_uses_them(self):
        bn = ibnorm.IBBatchNorm2d(4, compression="tanh", strength=1.2, dtype=torch.float64, momentum=0.5)
        before = {k: v.clone() for k, v in bn.state_dict().items()}
        xs = [rand_input((8, 4, 3, 3)) for _ in range(3)]
        for x in xs:
            bn(x)
        for name in ("running_mean", "running_var", "running_mean_c", "running_var_c", "running_var_u"):
            assert not torch.equal(getattr(bn, name), before[name]), name
        assert int(bn.num_batches_tracked) == 3
        # The running buffers follow the definition's statistics of the last batches (momentum 0.5).
        x = xs[-1]
        u = (x - x.mean((0, 2, 3), keepdim=True)) / torch.sqrt(x.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5)
        c = ibnorm.compress(u, "tanh", 1.2)
        exp_var_c = c.var((0, 2, 3), unbiased=True)
        assert torch.allclose(bn.running_var_c, 0.5 * exp_var_c + 0.5 * _ema_prev(xs), atol=1e-10)
        bn.eval()
        # eval output of one sample does not depend on the rest of the batch
        torch.testing.assert_close(bn(xs[0][:1]), bn(xs[0][:3])[:1])
        # eval equals a transcription with the running statistics
        rm, rv = bn.running_mean.view(1, -1, 1, 1), bn.running_var.view(1, -1, 1, 1)
        uu = (xs[0] - rm) / torch.sqrt(rv + 1e-5)
        cc = ibnorm.compress(uu, "tanh", 1.2)
        z = (cc - bn.running_mean_c.view(1, -1, 1, 1)) * torch.sqrt((bn.running_var_u + 1e-5) / (bn.running_var_c + 1e-5)).view(1, -1, 1, 1)
        torch.testing.assert_close(bn(xs[0]), z)

    def test_momentum_none_is_cumulative_average(self):
        bn = ibnorm.IBBatchNorm1d(3, momentum=None, compression="none", dtype=torch.float64)
        tb = nn.BatchNorm1d(3, momentum=None, dtype=torch.float64)
        xs = [rand_input((10, 3)) for _ in range(4)]
        for x in xs:
            torch.testing.assert_close(bn(x), tb(x))
        torch.testing.assert_close(bn.running_mean, torch.stack([x.mean(0) for x in xs]).mean(0))
        torch.testing.assert_close(bn.running_var, tb.running_var)
        ib = ibnorm.IBBatchNorm1d(3, momentum=None, compression="log", dtype=torch.float64)
        for x in xs:
            ib(x)
        assert int(ib.num_batches_tracked) == 4

    def test_no_running_stats_uses_batch_stats_in_eval(self):
        bn = ibnorm.IBBatchNorm2d(4, track_running_stats=False, compression="power", strength=0.7, dtype=torch.float64)
        assert bn.running_mean is None and "running_var_c" not in bn.state_dict()
        x = rand_input((5, 4, 2, 2))
        y_train = bn(x)
        bn.eval()
        torch.testing.assert_close(bn(x), y_train)

    def test_single_value_per_channel_in_training_raises(self):
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            ibnorm.IBBatchNorm1d(3)(torch.randn(1, 3))


def _ema_prev(xs):
    """The running var_c before the last batch, recomputed from scratch (momentum 0.5, init 1)."""
    run = torch.ones(4, dtype=torch.float64)
    for x in xs[:-1]:
        u = (x - x.mean((0, 2, 3), keepdim=True)) / torch.sqrt(x.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5)
        c = ibnorm.compress(u, "tanh", 1.2)
        run = 0.5 * run + 0.5 * c.var((0, 2, 3), unbiased=True)
    return run


class TestModuleConventions:
    def test_state_dict_round_trip_and_reset(self):
        m = ibnorm.IBBatchNorm2d(4, compression="log", strength=0.8, learnable_strength=True)
        for _ in range(2):
            m(torch.randn(6, 4, 3, 3))
        with torch.no_grad():
            m.strength_raw.add_(0.3)
            m.weight.mul_(2)
        sd = copy.deepcopy(m.state_dict())
        assert {"running_mean_c", "running_var_c", "running_var_u", "strength_raw", "num_batches_tracked"} <= set(sd)
        m2 = ibnorm.IBBatchNorm2d(4, compression="log", strength=0.8, learnable_strength=True)
        m2.load_state_dict(sd)
        m.eval(), m2.eval()
        x = torch.randn(2, 4, 3, 3)
        torch.testing.assert_close(m(x), m2(x))
        m2.reset_parameters()
        assert float(m2.strength.detach()) == pytest.approx(0.8) and int(m2.num_batches_tracked) == 0
        assert torch.equal(m2.weight, torch.ones(4))

    def test_extra_repr_shows_compression_and_strength(self):
        r = repr(ibnorm.IBLayerNorm(8, compression="tanh", strength=0.3))
        assert "compression=tanh" in r and "strength=0.3" in r
        assert "order=standardize_then_compress" in repr(ibnorm.IBRMSNorm(8, order="standardize_then_compress"))

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
    def test_dtype_is_kept(self, dtype):
        m = ibnorm.IBLayerNorm(16, dtype=dtype, compression="tanh")
        assert m.weight.dtype == dtype
        x = torch.randn(4, 16).to(dtype)
        assert m(x).dtype == dtype
        m2 = ibnorm.IBLayerNorm(16)
        assert m2.to(dtype)(x).dtype == dtype

    def test_learnable_strength_trains_and_stays_in_range(self):
        m = ibnorm.IBLayerNorm(32, compression="power", strength=0.9, learnable_strength=True)
        opt = torch.optim.SGD([m.strength_raw], lr=1.0)
        for _ in range(20):
            loss = m(rand_input((16, 32), dtype=torch.float32)).pow(4).mean()  # kurtosis: lower with stronger compression
            opt.zero_grad()
            loss.backward()
            opt.step()
        s = float(m.strength.detach())
        assert 0.0 < s < 0.85

    def test_device_argument(self):
        m = ibnorm.IBBatchNorm1d(3, device="cpu")
        assert m.running_var_u.device.type == "cpu"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1e-3, 1.0])
def test_rms_eps_none_follows_torch_per_input_dtype(dtype, scale):
    """eps=None is what nn.RMSNorm(eps=None) takes for this input dtype (the machine epsilon of the dtype it
    computes in), in the layer and in a converted model, for small and unit-scale inputs."""
    torch.manual_seed(0)
    x = (torch.randn(4, 3, 64) * scale).to(dtype)
    base = torch.nn.RMSNorm(64, eps=None, dtype=dtype)
    ib = ibnorm.IBRMSNorm(64, eps=None, compression="none", dtype=dtype)
    tol = {torch.bfloat16: 2e-2, torch.float16: 2e-3, torch.float32: 1e-5, torch.float64: 1e-10}[dtype]
    torch.testing.assert_close(ib(x).float(), base(x).float(), atol=tol, rtol=tol)
    model = torch.nn.Sequential(torch.nn.RMSNorm(64, eps=None, dtype=dtype))
    ibnorm.convert_norms(model, "none")
    assert isinstance(model[0], ibnorm.IBRMSNorm) and model[0].eps is None
    torch.testing.assert_close(model(x).float(), base(x).float(), atol=tol, rtol=tol)


def test_rms_unit_offset_keeps_gemmas_one_plus_weight_form():
    layer = ibnorm.IBRMSNorm(8, eps=1e-6, compression="none", unit_offset=True)
    assert torch.equal(layer.weight, torch.zeros(8)) and "unit_offset=True" in repr(layer)
    with torch.no_grad():
        layer.weight.uniform_(-0.5, 0.5)
    x = torch.randn(3, 8)
    want = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + layer.weight)
    torch.testing.assert_close(layer(x), want)
    again = ibnorm.IBRMSNorm(8, eps=1e-6, compression="none", unit_offset=True)
    again.load_state_dict(layer.state_dict())
    torch.testing.assert_close(again(x), layer(x))
    with pytest.raises(RuntimeError, match="unit_offset"):
        ibnorm.IBRMSNorm(8, eps=1e-6, compression="none").load_state_dict(layer.state_dict())
    with pytest.raises(ValueError, match="elementwise_affine"):
        ibnorm.IBRMSNorm(8, unit_offset=True, elementwise_affine=False)
