"""The C++/OpenMP CPU kernel for last-dimension groups (layer and RMS grouping), float32 math.

Built on first use with ``torch.utils.cpp_extension.load`` (cached in ``$TORCH_EXTENSIONS_DIR``, by
default ``~/.cache/torch_extensions``), vectorized for the CPU capability torch reports (AVX-512 or
AVX2). Without a compiler, on another CPU, or with ``IBNORM_CPU_EXT=0``, :func:`load` returns None
and ``impl="auto"`` uses :mod:`ibnorm.kernels.autograd`. Half-precision inputs are converted to float32 for the
kernel and the output converted back; the saved tensor is the original input.
"""
from __future__ import annotations

import hashlib
import os
import threading
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from .. import config
from ..atomic import atomic_write_bytes
from ..ops import get_compression
from . import kernel_strength

_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-DCPU_CAPABILITY_AVX512",
               "-DCPU_CAPABILITY=AVX512"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"],
}
_lock = threading.Lock()
_module = None
_failed: Optional[str] = None


def _stable_source(flags: list[str]) -> Path:
    """A copy of the source at a path named by its content and flags, so that every checkout of the same
    version shares one build (building from each checkout's own path would rebuild whenever it changes)."""
    code = (Path(__file__).with_name("csrc") / "ibnorm_cpu.cpp").read_bytes()
    digest = hashlib.sha256(code + " ".join(flags).encode()).hexdigest()[:12]
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions"))
    dst = root / "ibnorm_sources" / f"ibnorm_cpu_{digest}" / "ibnorm_cpu.cpp"
    if not dst.exists() or dst.read_bytes() != code:
        atomic_write_bytes(dst, code)
    return dst


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
            return None
        try:
            from torch.utils.cpp_extension import load as cpp_load
            flags = ["-O3", "-fopenmp", *_FLAGS[cap]]
            src = _stable_source(flags)
            _module = cpp_load(name=src.parent.name, sources=[str(src)], extra_cflags=flags,
                               extra_ldflags=["-fopenmp"], verbose=False)
        except Exception as e:  # no compiler, no headers, a build error: fall back, say so once
            _failed = f"{type(e).__name__}: {str(e)[:300]}"
            warnings.warn(f"ibnorm: the C++ CPU kernel could not be built ({_failed}); using the autograd kernel")
            return None
    return _module


def supports(x: Tensor) -> bool:
    """A non-empty float32/bfloat16/float16 CPU tensor, and a built extension (the caller checks the grouping)."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16, torch.float16) or x.numel() == 0:
        return False
    return load() is not None


class CPURowsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lam_t, m, centered, eps, op, lam, cts):
        ext = load()
        x2 = x.reshape(-1, m).to(torch.float32).contiguous()
        lam_v = kernel_strength(lam_t, lam)
        w = weight.reshape(-1).float().contiguous() if weight is not None else None
        b = bias.reshape(-1).float().contiguous() if bias is not None else None
        y, stats = ext.forward(x2, w, b, lam_v, get_compression(op).code, centered, cts, eps)
        ctx.save_for_backward(x, weight, lam_t, stats)
        ctx.cfg = (m, centered, eps, op, lam_v, cts, bias is not None)
        return y.reshape(x.shape).to(x.dtype)

    @staticmethod
    def backward(ctx, gy):
        x, weight, lam_t, stats = ctx.saved_tensors
        m, centered, eps, op, lam_v, cts, has_bias = ctx.cfg
        ext = load()
        need_dw = weight is not None and ctx.needs_input_grad[1]
        need_db = has_bias and ctx.needs_input_grad[2]
        need_dl = lam_t is not None and ctx.needs_input_grad[3]
        w = weight.reshape(-1).float().contiguous() if weight is not None else None
        gx, gw, gb, gl = ext.backward(gy.reshape(-1, m).to(torch.float32).contiguous(),
                                      x.reshape(-1, m).to(torch.float32).contiguous(), w, stats, lam_v,
                                      get_compression(op).code, centered, cts, eps, need_dw, need_db, need_dl)
        gx = gx.reshape(x.shape).to(x.dtype)
        gw = gw.reshape(weight.shape).to(weight.dtype) if need_dw else None
        gb = gb.reshape(weight.shape if weight is not None else -1).to(x.dtype) if need_db else None
        glam = gl.to(lam_t.dtype) if need_dl else None
        return gx, gw, gb, glam, None, None, None, None, None, None
