"""Fast paths against the reference: outputs and every gradient, odd shapes, dtypes, memory, convergence."""
import pytest
import torch
from torch import nn

import ibnorm
from conftest import skip_reason

TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (2e-5, 2e-5), torch.bfloat16: (2e-2, 2e-2), torch.float16: (4e-3, 4e-3)}
OPS = [("power", 0.7), ("log", 1.3), ("tanh", 0.6), ("none", None)]
SHAPES = {"layer": [(1, 1, 1023), (5, 123, 123), (64, 768)], "rms": [(1, 1, 1023), (5, 123, 123)],
          "group": [(3, 12, 7, 5)], "batch2d": [(6, 5, 7, 3)], "batch1d": [(9, 5)]}


def build(grouping, shape, op, lam, impl, dtype, learnable=False, order="compress_then_standardize", affine=True):
    kw = dict(compression=op, strength=lam, impl=impl, dtype=dtype, learnable_strength=learnable and op != "none", order=order)
    if grouping == "layer":
        m = ibnorm.IBLayerNorm(shape[-1], elementwise_affine=affine, **kw)
    elif grouping == "rms":
        m = ibnorm.IBRMSNorm(shape[-1], elementwise_affine=affine, **kw)
    elif grouping == "group":
        m = ibnorm.IBGroupNorm(3, shape[1], affine=affine, **kw)
    elif grouping == "batch2d":
        m = ibnorm.IBBatchNorm2d(shape[1], affine=affine, **kw)
    else:
        m = ibnorm.IBBatchNorm1d(shape[1], affine=affine, **kw)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name != "strength_raw":
                p.copy_((torch.rand_like(p.float()) + 0.5).to(p.dtype))
    return m


def run(m, x, gy):
    x = x.detach().clone().requires_grad_(True)
    y = m(x)
    y.backward(gy)
    grads = {n: p.grad.detach().clone() for n, p in m.named_parameters()}
    return y.detach(), x.grad.detach(), grads


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("order", ibnorm.ORDERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("op,lam", OPS)
@pytest.mark.parametrize("grouping", list(SHAPES))
def test_fast_equals_reference(grouping, op, lam, dtype, order, affine, kernel_calls):
    from ibnorm.kernels import cpu
    rtol, atol = TOL[dtype]
    for shape in SHAPES[grouping]:
        torch.manual_seed(0)
        x = (torch.randn(shape) * torch.randn(shape).exp() * 3 + 1).to(dtype)
        gy = torch.randn(shape).to(dtype)
        for learnable in (False, True):
            fast = build(grouping, shape, op, lam, "auto", dtype, learnable, order, affine)
            ref = build(grouping, shape, op, lam, "reference", dtype, learnable, order, affine)
            yf, gxf, gpf = run(fast, x, gy)
            yr, gxr, gpr = run(ref, x, gy)
            scale = 1 + yr.float().abs().max()
            torch.testing.assert_close(yf, yr, rtol=rtol, atol=atol * scale)
            gscale = 1 + gxr.float().abs().max()
            torch.testing.assert_close(gxf, gxr, rtol=rtol, atol=atol * gscale)
            for n in gpr:
                s = 1 + gpr[n].float().abs().max()
                torch.testing.assert_close(gpf[n], gpr[n], rtol=rtol * 10, atol=atol * s * 10, msg=f"{n} {shape}")
            for b in ("running_mean", "running_var", "running_mean_c", "running_var_c", "running_var_u"):
                if hasattr(fast, b):
                    torch.testing.assert_close(getattr(fast, b), getattr(ref, b), rtol=rtol, atol=atol)
    # What ran: the C++ kernel for float32 and half types wherever it is built (never a silent fallback),
    # the autograd kernel for float64.
    kernel = "channels" if grouping.startswith("batch") else "rows"
    expected = 2 * len(SHAPES[grouping]) if dtype != torch.float64 and cpu.available() else 0
    assert kernel_calls[kernel] == expected


@pytest.mark.parametrize("lam", [1.0, 0.25, 0.2, 0.05, 1e-3, 1e-5])
@pytest.mark.parametrize("op", ["power", "log", "tanh"])
@pytest.mark.parametrize("grouping", ["layer", "batch2d"])
def test_any_strength_keeps_float32_accuracy(grouping, op, lam, kernel_calls):
    """s(u) = f(lam u) / lam: a fast f with an absolute error near 0 would have it divided by lam, so a small
    strength must take the series there. Checked against the float64 reference: output and input gradient."""
    shape = (64, 768) if grouping == "layer" else (8, 16, 12, 12)
    torch.manual_seed(0)
    x, gy = torch.randn(shape) * 2 + 1, torch.randn(shape)
    fast = build(grouping, shape, op, lam, "auto", torch.float32)
    ref = build(grouping, shape, op, lam, "reference", torch.float64)
    yf, gxf, _ = run(fast, x, gy)
    yr, gxr, _ = run(ref, x.double(), gy.double())
    rtol, atol = TOL[torch.float32]
    torch.testing.assert_close(yf.double(), yr, rtol=rtol, atol=atol)
    torch.testing.assert_close(gxf.double(), gxr, rtol=rtol, atol=atol * (1 + gxr.abs().max()))
    assert sum(kernel_calls.values()) == (1 if ibnorm.kernels.cpu.available() else 0)


@pytest.mark.parametrize("order", ibnorm.ORDERS)
def test_non_contiguous_input_and_order(order):
    base = torch.randn(16, 40, 3).exp()
    x = base.transpose(1, 2)  # (16, 3, 40), not contiguous
    assert not x.is_contiguous()
    gy = torch.randn(16, 3, 40)
    f = build("layer", (1, 40), "tanh", 0.8, "auto", torch.float32, True, order)
    r = build("layer", (1, 40), "tanh", 0.8, "reference", torch.float32, True, order)
    for a, b in zip(run(f, x, gy)[:2], run(r, x, gy)[:2]):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("grouping", ["layer", "rms", "group", "batch2d"])
@pytest.mark.parametrize("op,lam", OPS[:3])
def test_autograd_function_gradcheck(grouping, op, lam):
    shape = SHAPES[grouping][0] if grouping != "layer" else (3, 4, 7)
    shape = (3, 4, 7) if grouping == "rms" else shape
    x = (torch.randn(shape, dtype=torch.float64).exp() * 2).requires_grad_(True)
    m = build(grouping, shape, op, lam, "autograd", torch.float64, learnable=True)
    names = [n for n, _ in m.named_parameters()]
    assert "strength_raw" in names and "weight" in names  # the check covers every gradient, lambda's included

    def f(inp, *ps):
        return torch.func.functional_call(m, dict(zip(names, ps)), (inp,))

    m.train()
    assert torch.autograd.gradcheck(f, (x,) + tuple(m.parameters()), eps=1e-6, atol=1e-6)


def saved_bytes(fn, x):
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size() if t.data_ptr() != x.data_ptr() else 0
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn(x)
    return total[0] + x.numel() * x.element_size(), y


@pytest.mark.parametrize("op", ["power", "log", "tanh"])
def test_fast_path_saves_no_more_than_layernorm(op):
    x = torch.randn(512, 256, requires_grad=True)
    ln_bytes, _ = saved_bytes(nn.LayerNorm(256), x)
    fast_bytes, _ = saved_bytes(ibnorm.IBLayerNorm(256, compression=op, strength=0.7), x)
    ref_bytes, _ = saved_bytes(ibnorm.IBLayerNorm(256, compression=op, strength=0.7, impl="reference"), x)
    assert fast_bytes <= ln_bytes * 1.01 + 4096
    assert ref_bytes > 3 * ln_bytes  # what the kernels avoid


def test_impl_is_resolved_once_from_the_argument_or_ibnorm_impl(monkeypatch):
    import ibnorm.functional as IBF
    from ibnorm import config
    calls = []
    real = IBF._rows
    monkeypatch.setattr(IBF, "_rows", lambda *a, **k: calls.append(1) or real(*a, **k))
    m = ibnorm.IBLayerNorm(8)
    assert m.impl == "auto"
    m(torch.randn(2, 8))
    assert calls == [1]
    monkeypatch.setenv("IBNORM_IMPL", "reference")
    m(torch.randn(2, 8))  # a built layer keeps its impl: the environment is not read on forward
    assert calls == [1, 1]
    config.reload()
    try:
        r = ibnorm.IBLayerNorm(8)
        assert r.impl == "reference"
        r(torch.randn(2, 8))
        assert calls == [1, 1]  # the reference path takes no kernel
        assert ibnorm.IBLayerNorm(8, impl="autograd").impl == "autograd"  # the argument wins
    finally:
        monkeypatch.delenv("IBNORM_IMPL")
        config.reload()
    with pytest.raises(ValueError, match="impl must be"):
        ibnorm.IBLayerNorm(8, impl="gpu")


def test_a_named_kernel_refuses_what_it_cannot_run():
    with pytest.raises(ValueError, match="impl='cpu' runs float32/bfloat16/float16 CPU tensors"):
        ibnorm.IBBatchNorm2d(3, impl="cpu", dtype=torch.float64)(torch.randn(4, 3, 2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="impl='triton'"):
        ibnorm.IBLayerNorm(8, impl="triton")(torch.randn(2, 8))


def test_convergence_parity_fast_vs_reference():
    """A mini model trained with the fast path and with the reference ends at the same loss."""
    def train(impl):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 64), ibnorm.IBLayerNorm(64, compression="power", strength=0.7, impl=impl),
                              nn.GELU(), nn.Linear(64, 64), ibnorm.IBRMSNorm(64, compression="tanh", impl=impl),
                              nn.GELU(), nn.Linear(64, 4))
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(1)
        w = torch.randn(16, 4, generator=g)
        for _ in range(150):
            x = torch.randn(64, 16, generator=g)
            loss = nn.functional.cross_entropy(model(x), (x @ w).argmax(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        return loss.item()

    fast, ref = train("auto"), train("reference")
    assert fast == pytest.approx(ref, rel=2e-3, abs=2e-3)
    assert fast < 0.7  # and it did learn


def test_cpu_extension_builds_where_a_compiler_exists():
    import shutil
    from ibnorm.kernels import cpu
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip(skip_reason("ext", "no C++ compiler here: the autograd kernel is used"))
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip(skip_reason("ext", "no vectorized build for this CPU"))
    assert cpu.load() is not None, cpu._failed
    assert cpu.supports(torch.randn(4, 8))


def test_fallback_when_the_extension_cannot_be_built(monkeypatch):
    from ibnorm.kernels import cpu
    import torch.utils.cpp_extension as ext

    def broken(*a, **k):
        raise OSError("no compiler")

    monkeypatch.setattr(cpu, "_module", None)
    monkeypatch.setattr(cpu, "_failed", None)
    monkeypatch.setattr(ext, "load", broken)
    x = torch.randn(6, 33).exp().requires_grad_(True)
    m = ibnorm.IBLayerNorm(33, compression="log", strength=0.9)
    with pytest.warns(UserWarning, match="could not be built"):
        y = m(x)
    assert cpu.load() is None and "no compiler" in cpu._failed
    y.sum().backward()
    ref = ibnorm.IBLayerNorm(33, compression="log", strength=0.9, impl="reference")
    torch.testing.assert_close(y, ref(x))
    monkeypatch.setattr(cpu, "_failed", None)
    from ibnorm import config
    monkeypatch.setattr(config, "settings", config.Settings(cpu_ext=False))
    assert cpu.load() is None and "IBNORM_CPU_EXT" in cpu._failed


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the C++ kernel's calls, so a test can tell that the kernel ran and not a fallback."""
    from ibnorm.kernels import cpu
    calls = {"rows": 0, "channels": 0}
    for name, fn in (("rows", "ib_rows"), ("channels", "ib_channels")):
        real = getattr(cpu, fn)

        def spy(*a, _real=real, _name=name, **k):
            calls[_name] += 1
            return _real(*a, **k)
        monkeypatch.setattr(cpu, fn, spy)
    return calls


def _batch_layouts(shape):
    torch.manual_seed(0)
    x = torch.randn(shape) * torch.randn(shape).exp() * 2 + 1
    yield "contiguous", x
    yield "channels_last", x.contiguous(memory_format=torch.channels_last)
    yield "permuted", x.permute(0, 1, 3, 2)  # neither layout: strides (CHW, HW, 1, W)
    yield "sliced", torch.cat([x, x], dim=3)[..., ::2]  # gaps between elements


def _assert_batch_layers_match(fast, ref, x, gy, msg):
    """Two batch-grouped layers agree on the output, every gradient and the running buffers (per-dtype tolerance)."""
    rtol, atol = TOL[x.dtype]
    yf, gxf, gpf = run(fast, x, gy)
    yr, gxr, gpr = run(ref, x, gy)
    torch.testing.assert_close(yf, yr, rtol=rtol, atol=atol * (1 + yr.float().abs().max()), msg=msg)
    torch.testing.assert_close(gxf, gxr, rtol=rtol, atol=atol * (1 + gxr.float().abs().max()), msg=msg)
    assert set(gpf) == set(gpr)
    for n in gpr:
        s = 1 + gpr[n].float().abs().max()
        torch.testing.assert_close(gpf[n], gpr[n], rtol=rtol * 10, atol=atol * s * 10, msg=f"{n} {msg}")
    for b in ("running_mean", "running_var", "running_mean_c", "running_var_c", "running_var_u"):
        torch.testing.assert_close(getattr(fast, b), getattr(ref, b), rtol=rtol, atol=atol, msg=f"{b} {msg}")
    assert yf.shape == x.shape
    return yf


@pytest.mark.parametrize("sync", [False, True], ids=["local", "sync"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op,lam", OPS)
def test_batch_kernel_every_layout(op, lam, dtype, sync, kernel_calls, monkeypatch):
    """Batch grouping on the C++ kernel: outputs, every gradient (a learned strength's too) and the running buffers,
    for NCHW, channels_last, permuted and strided input, both orders, against the reference. ``sync``:
    IBSyncBatchNorm's passes, in one process with the sum over processes the identity (tests/test_distributed.py
    checks the sums over two processes)."""
    from ibnorm.kernels import cpu
    sync_calls = []
    kernel = cpu.ib_channels_sync
    monkeypatch.setattr(cpu, "ib_channels_sync", lambda *a, **k: sync_calls.append(1) or kernel(*a, **k))
    identity = lambda: (lambda t: t.clone())  # the sum over a process group of one
    # 20 channels x 35 positions: channels_last takes the 16x16 transposed tiles and their ragged edges.
    for layout, x in [*_batch_layouts((3, 5, 7, 4)), *_batch_layouts((2, 20, 5, 7))]:
        for order in ibnorm.ORDERS:
            x = x.to(dtype)
            gy = torch.randn(x.shape).to(dtype)
            if layout == "channels_last" and order == ibnorm.ORDERS[0]:  # gy in x's layout too (else it is copied)
                gy = gy.contiguous(memory_format=torch.channels_last)
            fast = build("batch2d", x.shape, op, lam, "auto", dtype, True, order)
            ref = build("batch2d", x.shape, op, lam, "reference", dtype, True, order)
            if sync:
                fast._reduce, ref._reduce = identity, identity
            yf = _assert_batch_layers_match(fast, ref, x, gy, f"{layout} {order}")
            assert yf.dtype == dtype
            if layout == "channels_last":  # the kernel writes the output in the input's layout
                assert yf.is_contiguous(memory_format=torch.channels_last)
    expected = 16 if cpu.available() else 0
    assert (len(sync_calls), kernel_calls["channels"]) == ((expected, 0) if sync else (0, expected))


@pytest.mark.parametrize("shape", [(2, 6, 5, 3), (3, 6), (2, 6, 9)])
def test_group_grouping_on_the_row_kernel(shape, kernel_calls):
    from ibnorm.kernels import cpu
    torch.manual_seed(0)
    x = torch.randn(shape) * 3 + 1
    gy = torch.randn(shape)
    for dtype in (torch.float32, torch.bfloat16):
        rtol, atol = TOL[dtype]
        fast = build("group", shape, "tanh", 0.6, "auto", dtype, True)
        ref = build("group", shape, "tanh", 0.6, "reference", dtype, True)
        for a, b in zip(run(fast, x.to(dtype), gy.to(dtype))[:2], run(ref, x.to(dtype), gy.to(dtype))[:2]):
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol * (1 + b.float().abs().max()))
    assert kernel_calls["rows"] == (2 if cpu.available() else 0)


def test_half_inputs_stay_half_inside_the_kernel():
    """bf16 in, bf16 out, and backward keeps the bf16 input: no float32 copy of the tensor is saved."""
    x = torch.randn(64, 256, dtype=torch.bfloat16, requires_grad=True)
    fast_bytes, y = saved_bytes(ibnorm.IBLayerNorm(256, compression="tanh", dtype=torch.bfloat16), x)
    ln_bytes, _ = saved_bytes(nn.LayerNorm(256, dtype=torch.bfloat16), x)
    assert y.dtype == torch.bfloat16
    assert fast_bytes <= ln_bytes * 1.01 + 4096


def test_the_kernel_cache_is_keyed_by_environment_and_the_first_build_says_so(tmp_path, monkeypatch, capsys):
    import sys
    import torch.utils.cpp_extension as ext
    from ibnorm.kernels import cpu as C
    flags = ["-O3"]
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    here = C._stable_source(flags).parent.name
    monkeypatch.setattr(sys, "prefix", "/another/venv")
    assert C._stable_source(flags).parent.name != here  # another environment, another build
    monkeypatch.setattr(sys, "prefix", sys.base_prefix)
    loads = []
    monkeypatch.setattr(ext, "load", lambda **kw: loads.append(kw) or "built")
    monkeypatch.setattr(C, "_module", None)
    monkeypatch.setattr(C, "_failed", None)
    assert C.load() == "built" and len(loads) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "building the C++ CPU kernel" in err[0] and "once" in err[0]
    monkeypatch.setattr(C, "_module", None)
    monkeypatch.setattr(C, "_failed", None)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    with pytest.warns(UserWarning, match="below AVX2.*autograd kernel"):
        assert C.load() is None
