"""torch.compile(fullgraph=True) and torch.export trace IBNorm: every grouping, learnable strength, BatchNorm in
train and eval, converted Hugging Face models; outputs and gradients match eager."""
import copy
import io

import pytest
import torch
from torch import nn

import ibnorm
from ibnorm.kernels import cpu

LAYERS = {
    "layer": lambda **kw: ibnorm.IBLayerNorm(12, **kw),
    "rms": lambda **kw: ibnorm.IBRMSNorm(12, **kw),
    "group": lambda **kw: ibnorm.IBGroupNorm(3, 6, **kw),
    "batch2d": lambda **kw: ibnorm.IBBatchNorm2d(6, **kw),
}
INPUTS = {"layer": (5, 7, 12), "rms": (5, 7, 12), "group": (4, 6, 5, 3), "batch2d": (4, 6, 5, 3)}


def _eager_and_compiled(make, shape):
    torch.manual_seed(0)
    eager = make()
    compiled_src = make()
    compiled_src.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_src, fullgraph=True, backend="aot_eager")
    x = torch.randn(shape) * 2 + 0.5
    gy = torch.randn(shape)
    out = []
    for m, src in ((eager, eager), (compiled, compiled_src)):
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        y.backward(gy)
        out.append((y.detach(), xi.grad, {n: p.grad for n, p in src.named_parameters()}, dict(src.named_buffers())))
    return out


@pytest.mark.parametrize("learnable", [False, True])
@pytest.mark.parametrize("op", ["power", "tanh"])
@pytest.mark.parametrize("grouping", list(LAYERS))
def test_fullgraph_compile_matches_eager(grouping, op, learnable):
    (ye, ge, pe, be), (yc, gc, pc, bc) = _eager_and_compiled(
        lambda: LAYERS[grouping](compression=op, strength=0.7, learnable_strength=learnable), INPUTS[grouping])
    torch.testing.assert_close(yc, ye, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gc, ge, rtol=1e-5, atol=1e-5)
    assert set(pc) == set(pe) and (not learnable or pe["strength_raw"] is not None)
    for n in pe:
        torch.testing.assert_close(pc[n], pe[n], rtol=1e-4, atol=1e-5, msg=n)
    for n in be:  # running statistics of batch grouping, updated inside the compiled graph
        torch.testing.assert_close(bc[n], be[n], rtol=1e-5, atol=1e-6, msg=n)


def test_batch_grouping_eval_and_inductor():
    """BatchNorm in eval (running statistics) and the Inductor backend, with bfloat16 rows."""
    torch.manual_seed(0)
    bn = ibnorm.IBBatchNorm2d(6, compression="log", strength=0.8)
    bn(torch.randn(8, 6, 4, 4) * 3)  # fill the running statistics
    bn.eval()
    x = torch.randn(3, 6, 4, 4)
    torch.testing.assert_close(torch.compile(bn, fullgraph=True)(x), bn(x), rtol=1e-5, atol=1e-5)
    ln = ibnorm.IBLayerNorm(16, compression="tanh", dtype=torch.bfloat16)
    xb = torch.randn(4, 16, dtype=torch.bfloat16)
    torch.testing.assert_close(torch.compile(ln, fullgraph=True)(xb), ln(xb))


def _hf_model(name):
    from ibnorm.lab.models import build_model
    lm = {"vocab_size": 32, "context": 8} if name in ("gpt2-mini", "llama-mini") else {}
    return build_model(name, "ib_tanh:learnable_strength=1", width=16, depth=1, **lm)[0]


@pytest.mark.parametrize("name", ["gpt2-mini", "llama-mini", "vit-mini", "resnet-mini"])
def test_converted_hf_models_compile_without_graph_breaks(name):
    torch.manual_seed(0)
    model = _hf_model(name).eval()  # eval: dropout and BatchNorm updates would differ otherwise
    if name in ("gpt2-mini", "llama-mini"):
        kwargs = {"input_ids": torch.randint(0, 32, (2, 8))}
    else:
        kwargs = {"pixel_values": torch.randn(2, 1, 28, 28)}
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    ye = model(**kwargs).logits
    yc = compiled(**kwargs).logits
    torch.testing.assert_close(yc, ye, rtol=1e-4, atol=1e-4)
    ge = torch.autograd.grad(ye.square().mean(), [p for p in model.parameters()], allow_unused=True)
    gc = torch.autograd.grad(yc.square().mean(), [p for p in model.parameters()], allow_unused=True)
    for a, b in zip(gc, ge):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_export_round_trip():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), ibnorm.IBBatchNorm2d(4, compression="power"),
                          nn.Flatten(2), ibnorm.IBLayerNorm(36, compression="tanh", learnable_strength=True),
                          ibnorm.IBRMSNorm(36, compression="log"))
    model(torch.randn(8, 1, 6, 6))
    model.eval()
    x = torch.randn(2, 1, 6, 6)
    program = torch.export.export(model, (x,))
    buf = io.BytesIO()
    torch.export.save(program, buf)
    buf.seek(0)
    loaded = torch.export.load(buf)
    torch.testing.assert_close(loaded.module()(x), model(x))
    if cpu.available():  # the exported graph calls the C++ kernel's custom op, not a copy of its math
        assert "ibnorm.rows_forward" in str(program.graph)


def test_torch_func_and_forward_mode_ad_run_on_the_reference():
    """jacrev, jvp, vmap and forward-mode AD work through every layer (impl='auto' runs the reference under them)
    and agree with the reference; torch.jit.script fails with one line that names what works instead."""
    import torch.autograd.forward_ad as fwAD
    torch.manual_seed(0)
    for layer in (ibnorm.IBLayerNorm(6, compression="tanh"), ibnorm.IBRMSNorm(6, compression="log"),
                  ibnorm.IBGroupNorm(2, 6), ibnorm.IBBatchNorm1d(6, compression="tanh")):
        if isinstance(layer, ibnorm.IBBatchNorm1d):  # as for nn.BatchNorm: transforms cannot update running stats
            layer.eval()
        ref = copy.deepcopy(layer)
        ref.impl = "reference"
        x = torch.randn(4, 6)
        torch.testing.assert_close(torch.func.jacrev(layer)(x), torch.func.jacrev(ref)(x))
        t = torch.randn_like(x)
        torch.testing.assert_close(torch.func.jvp(layer, (x,), (t,))[1], torch.func.jvp(ref, (x,), (t,))[1])
        with fwAD.dual_level():
            got = fwAD.unpack_dual(layer(fwAD.make_dual(x, t))).tangent
        torch.testing.assert_close(got, torch.func.jvp(ref, (x,), (t,))[1])
        if isinstance(layer, (ibnorm.IBLayerNorm, ibnorm.IBRMSNorm)):  # vmap over samples (per-row groups)
            torch.testing.assert_close(torch.func.vmap(layer)(x[:, None]), ref(x[:, None]))
    with pytest.raises(RuntimeError, match="does not support torch.jit.script.*torch.compile") as e:
        torch.jit.script(ibnorm.IBLayerNorm(6))
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="impl='cpu' cannot run under forward-mode AD"):
        torch.func.jacrev(ibnorm.IBLayerNorm(6, impl="cpu"))(torch.randn(2, 6))
