"""The C++/OpenMP CPU kernels: last-dimension groups (layer, RMS and group grouping) and channels (batch grouping).

Built on first use with ``torch.utils.cpp_extension.load`` (cached in ``$TORCH_EXTENSIONS_DIR``, by
default ``~/.cache/torch_extensions``), vectorized for the CPU capability torch reports (AVX-512 or
AVX2). Without a compiler, on another CPU, or with ``IBNORM_CPU_EXT=0``, :func:`load` returns None
and ``impl="auto"`` uses :mod:`ibnorm.kernels.autograd`.

float32, bfloat16 and float16 go in and come out as they are; the math is float32 inside the kernel, one
group at a time, so there is no float32 copy of the tensor. Backward saves the input and per-group
statistics only. The kernels are torch operators (``ibnorm::rows_forward`` and kin): their schemas and fake
implementations are defined below, their CPU kernels and autograd in C++ (one dispatcher call per eager call), so
``torch.compile(fullgraph=True)`` and ``torch.export`` trace them; a learned strength enters as a 0-d tensor and is
read inside the op (no ``.item()`` in Python).
"""
from __future__ import annotations

import hashlib
import os
import sys
import threading
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from .. import config
from ..atomic import atomic_write_bytes
from ..ops import get_compression

_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-DCPU_CAPABILITY_AVX512",
               "-DCPU_CAPABILITY=AVX512"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"],
}
_lock = threading.Lock()
_module = None
_failed: Optional[str] = None


def build_key(flags: list[str]) -> str:
    """What a build depends on besides its source: the compiler flags, the torch version and build it links
    against, and the Python environment (two virtualenvs keep two builds instead of rebuilding in turn)."""
    return " ".join([*flags, torch.__version__, str(torch.version.git_version), str(torch._C._GLIBCXX_USE_CXX11_ABI),
                     sys.prefix, sys.version.split()[0]])


def _stable_source(flags: list[str]) -> Path:
    """A copy of the source at a path named by its content and :func:`build_key`, so that every checkout of the
    same version in one environment shares one build (building from each checkout's own path would rebuild
    whenever it changes), and each environment has its own."""
    code = (Path(__file__).with_name("csrc") / "ibnorm_cpu.cpp").read_bytes()
    digest = hashlib.sha256(code + build_key(flags).encode()).hexdigest()[:12]
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions"))
    dst = root / "ibnorm_sources" / f"ibnorm_cpu_{digest}" / "ibnorm_cpu.cpp"
    if not dst.exists() or dst.read_bytes() != code:
        atomic_write_bytes(dst, code)
    return dst


def _put_ninja_on_path() -> None:
    """cpp_extension runs `ninja` from PATH; PyPI's ninja (a dev extra) sits in the venv, off PATH unless activated."""
    try:
        import ninja
    except ImportError:
        return
    if ninja.BIN_DIR not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def load():
    """The compiled extension, or None (with one warning saying why) when it cannot be had."""
    global _module, _failed
    if _module is not None or _failed is not None:
        return _module
    with _lock:
        if _module is not None or _failed is not None:
            return _module
        if not config.settings.cpu_ext:
            _failed = "disabled by IBNORM_CPU_EXT=0"
            return None
        cap = torch.backends.cpu.get_cpu_capability()
        if cap not in _FLAGS:
            _failed = f"CPU capability {cap} has no vectorized build"
            warnings.warn(f"ibnorm: this CPU's torch capability is {cap}, below AVX2, which the C++ kernel needs: "
                          "IBNorm layers run the autograd kernel (plain PyTorch), several times slower")
            return None
        try:
            _put_ninja_on_path()
            from torch.utils.cpp_extension import _get_build_directory, load as cpp_load
            flags = ["-O3", "-fopenmp", *_FLAGS[cap]]
            src = _stable_source(flags)
            build_dir = Path(_get_build_directory(src.parent.name, False))
            if not list(build_dir.glob("*.so")):  # the first use in this environment: say what the pause is
                print(f"ibnorm: building the C++ CPU kernel for this environment ({cap}; once, about a minute) "
                      f"in {build_dir}", file=sys.stderr, flush=True)
            _module = cpp_load(name=src.parent.name, sources=[str(src)], extra_cflags=flags,
                               extra_ldflags=["-fopenmp"], verbose=False)
        except Exception as e:  # no compiler, no headers, a build error: fall back, say so once
            _failed = f"{type(e).__name__}: {str(e)[:300]}"
            warnings.warn(f"ibnorm: the C++ CPU kernel could not be built ({_failed}); using the autograd kernel")
            return None
    return _module


def available() -> bool:
    """Whether the extension is built (building it on the first call)."""
    return _module is not None or (_failed is None and load() is not None)


# What torch.compiler.assume_constant_result does, without importing torch._dynamo at ``import ibnorm``:
# torch.compile runs this at trace time and keeps the answer, so tracing never steps into the build.
available._dynamo_marked_constant = True  # type: ignore[attr-defined]

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def supports(x: Tensor) -> bool:
    """A non-empty float32/bfloat16/float16 CPU tensor, and a built extension (the caller checks the grouping)."""
    return x.device.type == "cpu" and x.dtype in DTYPES and x.numel() > 0 and available()


# ---- the operators: schemas and fake implementations here, CPU kernels and autograd in the C++ library -----------

_LIB = torch.library.Library("ibnorm", "FRAGMENT")  # held here: the definitions live as long as this module
_LIB.define("rows_forward(Tensor x, Tensor? weight, Tensor? bias, Tensor? lam_t, float lam, int op, bool centered, "
            "bool cts, float eps) -> (Tensor, Tensor)")
_LIB.define("rows_backward(Tensor gy, Tensor x, Tensor? weight, Tensor stats, Tensor? lam_t, float lam, int op, "
            "bool centered, bool cts, float eps, bool need_dw, bool need_db, bool need_dl, int bias_rows) "
            "-> (Tensor, Tensor, Tensor, Tensor)")
_LIB.define("channels_forward(Tensor x, Tensor? weight, Tensor? bias, Tensor? lam_t, float lam, int op, bool cts, "
            "float eps) -> (Tensor, Tensor)")
_LIB.define("channels_backward(Tensor gy, Tensor x, Tensor? weight, Tensor stats, Tensor? lam_t, float lam, int op, "
            "bool cts, float eps, bool need_dw, bool need_db, bool need_dl) -> (Tensor, Tensor, Tensor, Tensor)")


# The backwards that create_graph=True takes (the C++ backward calls them when grad mode is on): the same schemas,
# computed by the reference under autograd (:mod:`ibnorm.kernels.higher_order`), so they can be differentiated again.
_LIB.define("rows_backward_differentiable(Tensor gy, Tensor x, Tensor? weight, Tensor stats, Tensor? lam_t, "
            "float lam, int op, bool centered, bool cts, float eps, bool need_dw, bool need_db, bool need_dl, "
            "int bias_rows) -> (Tensor, Tensor, Tensor, Tensor)")
_LIB.define("channels_backward_differentiable(Tensor gy, Tensor x, Tensor? weight, Tensor stats, Tensor? lam_t, "
            "float lam, int op, bool cts, float eps, bool need_dw, bool need_db, bool need_dl) "
            "-> (Tensor, Tensor, Tensor, Tensor)")


def _rows_backward_differentiable(gy, x, weight, stats, lam_t, lam, op, centered, cts, eps, need_dw, need_db, need_dl,
                                  bias_rows):
    from .higher_order import OP_BY_CODE, order_of, reference_grads
    m = x.shape[1]
    p = 1 if weight is None else weight.numel() // m  # row i takes affine row i % p
    xs, gys = x.reshape(-1, p, m), gy.reshape(-1, p, m)
    w = None if weight is None else weight.reshape(p, m)
    gx, gw, gl = reference_grads(gys, xs, w, lam_t, lam, (-1,), centered, eps, OP_BY_CODE[op], order_of(cts), (p, m),
                                 need_dw and w is not None, need_dl and lam_t is not None)
    empty = x.new_empty(0, dtype=torch.float32)
    gb = gy.float().reshape(-1, bias_rows, m).sum(0) if need_db else empty
    return (gx.reshape(x.shape), empty if gw is None else gw.float(), gb,
            x.new_zeros((), dtype=torch.float32) if gl is None else gl.float().reshape(()))


def _channels_backward_differentiable(gy, x, weight, stats, lam_t, lam, op, cts, eps, need_dw, need_db, need_dl):
    from .higher_order import OP_BY_CODE, order_of, reference_grads
    gx, gw, gl = reference_grads(gy, x, weight, lam_t, lam, (0, 2), True, eps, OP_BY_CODE[op], order_of(cts),
                                 (x.shape[1], 1), need_dw and weight is not None, need_dl and lam_t is not None)
    empty = x.new_empty(0, dtype=torch.float32)
    gb = gy.float().sum((0, 2)) if need_db else empty
    return (gx, empty if gw is None else gw.float(), gb,
            x.new_zeros((), dtype=torch.float32) if gl is None else gl.float().reshape(()))


_LIB.impl("rows_backward_differentiable", _rows_backward_differentiable, "CompositeImplicitAutograd")
_LIB.impl("channels_backward_differentiable", _channels_backward_differentiable, "CompositeImplicitAutograd")


@torch.library.register_fake("ibnorm::rows_forward", lib=_LIB)
def _rows_forward_fake(x, weight, bias, lam_t, lam, op, centered, cts, eps):
    """x ``[R, M]`` -> (y like x, stats ``[R, 2]``: mean, rstd)."""
    return torch.empty_like(x), x.new_empty((x.shape[0], 2), dtype=torch.float32)


@torch.library.register_fake("ibnorm::rows_backward", lib=_LIB)
def _rows_backward_fake(gy, x, weight, stats, lam_t, lam, op, centered, cts, eps, need_dw, need_db, need_dl,
                        bias_rows):
    """-> (gx, gw ``[P, M]``, gb ``[bias_rows, M]``, glam); gradients not asked for are empty."""
    m = x.shape[1]
    gw = x.new_empty((weight.numel() // m, m), dtype=torch.float32) if need_dw else x.new_empty(0, dtype=torch.float32)
    gb = x.new_empty((bias_rows, m), dtype=torch.float32) if need_db else x.new_empty(0, dtype=torch.float32)
    return torch.empty_like(x), gw, gb, x.new_empty((), dtype=torch.float32)


@torch.library.register_fake("ibnorm::channels_forward", lib=_LIB)
def _channels_forward_fake(x, weight, bias, lam_t, lam, op, cts, eps):
    """x ``[N, C, S]`` -> (y like x, stats ``[C, 6]``: mean(x), rstd, var(x), mean(c), var(c), var(u))."""
    return torch.empty_like(x), x.new_empty((x.shape[1], 6), dtype=torch.float32)


@torch.library.register_fake("ibnorm::channels_backward", lib=_LIB)
def _channels_backward_fake(gy, x, weight, stats, lam_t, lam, op, cts, eps, need_dw, need_db, need_dl):
    c = x.shape[1]
    gw = x.new_empty((c,), dtype=torch.float32) if need_dw else x.new_empty(0, dtype=torch.float32)
    gb = x.new_empty((c,), dtype=torch.float32) if need_db else x.new_empty(0, dtype=torch.float32)
    return torch.empty_like(x), gw, gb, x.new_empty((), dtype=torch.float32)


# ---- entry points for ibnorm.functional ---------------------------------------------------------------------

def _strength(strength) -> tuple[Optional[Tensor], float]:
    """A learned strength (a tensor) goes to the op as it is; a fixed one as a number (1.0 for the none op)."""
    if isinstance(strength, Tensor):
        return strength, 1.0
    return None, 1.0 if strength is None else float(strength)


def _float_param(t: Optional[Tensor], shape) -> Optional[Tensor]:
    return None if t is None else t.reshape(shape).float().contiguous()


def ib_rows(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], strength, m: int, centered: bool, eps: float,
            compression: str, cts: bool, affine_shape: tuple) -> Tensor:
    """Groups of the last ``m`` values of ``x``; the affine map has ``affine_shape`` ``(P, m)`` (``P`` > 1: row i
    takes row i % P) or ``(m,)``."""
    lam_t, lam = _strength(strength)
    y, _ = torch.ops.ibnorm.rows_forward(x.reshape(-1, m).contiguous(), _float_param(weight, affine_shape),
                                         _float_param(bias, affine_shape), lam_t, lam,
                                         get_compression(compression).code, centered, cts, float(eps))
    return y.reshape(x.shape)


def ib_channels(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], strength, eps: float, compression: str,
                cts: bool) -> tuple[Tensor, Tensor]:
    """Batch grouping of ``x`` ``(N, C, *)``: ``(y, stats [C, 6])``."""
    lam_t, lam = _strength(strength)
    x3 = x.reshape(x.shape[0], x.shape[1], -1)
    y, stats = torch.ops.ibnorm.channels_forward(x3, _float_param(weight, (-1,)), _float_param(bias, (-1,)), lam_t, lam,
                                                 get_compression(compression).code, cts, float(eps))
    return y.reshape(x.shape), stats


# ---- synchronized batch grouping (IBSyncBatchNorm): passes of the C++ kernel with all-reduces between them ------

_FWD_SUMS, _FWD_APPLY, _BWD_SUMS_A, _BWD_SUMS_B, _BWD_DX = range(5)


def _params(c: int, **columns: Tensor) -> Tensor:
    """The kernel's per-channel table P ``[C, 9]``: mu, r, m_c, k, G1, kc, ku, SU, SUU (absent ones 0)."""
    names = ("mu", "r", "m_c", "k", "G1", "kc", "ku", "SU", "SUU")
    p = torch.zeros(c, len(names), dtype=torch.float32)
    for i, name in enumerate(names):
        if name in columns:
            p[:, i] = columns[name].to(torch.float32)
    return p


class SyncChannels(torch.autograd.Function):
    """Batch grouping with statistics summed over processes by ``reduce``: four forward passes (two for the moments
    of x, step 3's sums, the output) and three backward passes (step 3's gradient sums, the sums through u, the input
    gradient), each reading a channel once. Only sums over processes travel; parameter gradients stay local (DDP
    reduces them), as in :class:`ibnorm.distributed.IBSyncBatchNorm`'s reference path."""

    @staticmethod
    def forward(ctx, x3, weight, bias, lam_t, lam, op, standardize, eps, reduce, stats_out):
        c = x3.shape[1]
        lam = float(lam_t) if lam_t is not None else lam
        ext = load()
        # Step 1: this process's mean and variance in two passes of the kernel (the identity op: sums of x, then of
        # (x - mean)^2), combined in float64 over processes. (torch.var_mean over dims 0 and 2 costs 2x BatchNorm.)
        n_l = float(x3.shape[0] * x3.shape[2])
        ones, identity = torch.ones(c), get_compression("none").code
        _, s = ext.channels_sync_pass(_FWD_SUMS, x3, None, None, None, _params(c, mu=torch.zeros(c), r=ones), 1.0,
                                      identity, False)
        mean_l = s[:, 0] / n_l
        _, s = ext.channels_sync_pass(_FWD_SUMS, x3, None, None, None, _params(c, mu=mean_l, r=ones), 1.0,
                                      identity, False)
        shift = s[:, 0] / n_l  # what float rounding left of the mean
        mean_l, var_l = mean_l + shift, (s[:, 1] / n_l - shift ** 2).clamp_min(0.0)
        packed = torch.stack([mean_l.double() * n_l, (var_l.double() + mean_l.double() ** 2) * n_l,
                              torch.full((c,), n_l, dtype=torch.float64)])
        total = reduce(packed)
        count = float(total[2, 0])  # the global batch's values per channel
        mean = total[0] / count
        var = (total[1] / count - mean ** 2).clamp_min(0.0)
        r = (var + eps).rsqrt()
        w, b = _float_param(weight, (-1,)), _float_param(bias, (-1,))
        stats = {"mean_x": mean, "var_x": var, "mean_c": None, "var_c": None, "var_u": None}
        if standardize:  # step 3's statistics: sums of c, c^2, u^2 over processes
            _, sums = ext.channels_sync_pass(_FWD_SUMS, x3, None, None, None, _params(c, mu=mean, r=r), lam, op, True)
            sums = reduce(sums[:, :3]) / count
            m_c, v_u = sums[:, 0], sums[:, 2]
            v_c = (sums[:, 1] - m_c ** 2).clamp_min(0.0)
            k = ((v_u + eps) / (v_c + eps)).sqrt()
            stats.update(mean_c=m_c, var_c=v_c, var_u=v_u)
            p = _params(c, mu=mean, r=r, m_c=m_c, k=k)
        else:
            p = _params(c, mu=mean, r=r)
        y, _ = ext.channels_sync_pass(_FWD_APPLY, x3, None, w, b, p, lam, op, standardize)
        ctx.save_for_backward(x3, w, lam_t, p, stats["var_c"], stats["var_u"])
        dtypes = tuple(None if t is None else t.dtype for t in (weight, bias))  # of the gradients to return
        ctx.cfg = (lam, op, standardize, eps, reduce, count, *dtypes)
        stats_out.update(stats, count=int(count))  # for the running buffers
        return y

    @staticmethod
    def backward(ctx, gy):
        if torch.is_grad_enabled():  # create_graph=True: these passes' gradients cannot be differentiated again
            raise RuntimeError("double backward (create_graph=True) through IBSyncBatchNorm's C++ kernel is not "
                               "supported: build the layer with impl='reference' for gradients of gradients")
        x3, w, lam_t, p, v_c, v_u = ctx.saved_tensors
        lam, op, standardize, eps, reduce, count, w_dtype, b_dtype = ctx.cfg
        ext = load()
        if gy.stride() != x3.stride():  # the passes read gy in x's layout
            gy = torch.empty_like(x3).copy_(gy)
        _, a = ext.channels_sync_pass(_BWD_SUMS_A, x3, gy, w, None, p, lam, op, standardize)
        gw, gb = a[:, 2].float(), a[:, 3].float()  # local: DDP sums parameter gradients
        p = p.clone()
        if standardize:
            g = reduce(a[:, :2]) / count
            m_c, k = p[:, 2].double(), p[:, 3].double()
            g1 = g[:, 0]
            g2 = g[:, 1] - m_c * g1
            p[:, 4], p[:, 5], p[:, 6] = g1.float(), (k * g2 / (v_c + eps)).float(), (k * g2 / (v_u + eps)).float()
        _, bsum = ext.channels_sync_pass(_BWD_SUMS_B, x3, gy, w, None, p, lam, op, standardize)
        su = reduce(bsum[:, :2]) / count
        p[:, 7], p[:, 8] = su[:, 0].float(), su[:, 1].float()
        gx, _ = ext.channels_sync_pass(_BWD_DX, x3, gy, w, None, p, lam, op, standardize)
        gl = bsum[:, 2].sum().to(lam_t.dtype) if lam_t is not None and ctx.needs_input_grad[3] else None
        return (gx, gw.to(w_dtype) if w_dtype is not None and ctx.needs_input_grad[1] else None,
                gb.to(b_dtype) if b_dtype is not None and ctx.needs_input_grad[2] else None,
                gl, None, None, None, None, None, None)


def ib_channels_sync(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], strength, eps: float,
                     compression: str, cts: bool, reduce) -> tuple[Tensor, dict]:
    """Batch grouping of ``x`` ``(N, C, *)`` with statistics over processes (``reduce`` sums a tensor over them):
    ``(y, statistics)``, the statistics those of the global batch (for the running buffers) with ``count``."""
    lam_t, lam = _strength(strength)
    op = get_compression(compression)
    standardize = op.has_strength and cts
    x3 = x.reshape(x.shape[0], x.shape[1], -1)
    stats: dict = {}
    y = SyncChannels.apply(x3, weight, bias, lam_t, lam, op.code, standardize, float(eps), reduce, stats)
    return y.reshape(x.shape), stats
