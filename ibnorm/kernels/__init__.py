"""Fast paths of :mod:`ibnorm.functional`, chosen automatically by the layers.

- :mod:`ibnorm.kernels.fused`: one autograd Function for every grouping (hand-derived backward,
  saves only the input and per-group statistics), plain PyTorch ops;
- :mod:`ibnorm.kernels.triton_rows`: Triton kernels for the same groups on CUDA (when ``triton`` is installed);
- :mod:`ibnorm.kernels.cpu`: a C++/OpenMP kernel for last-dimension groups (layer and RMS grouping)
  in float32, built on first use with ``torch.utils.cpp_extension``; when the compiler or the build is
  missing the fused Function is used instead.

The layers' ``impl`` argument (``"auto"``, ``"fused"``, ``"reference"``) or the environment variable
``IBNORM_IMPL=reference`` forces the reference path of :mod:`ibnorm.functional`.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

from torch import Tensor

from ..functional import COMPRESS_THEN_STANDARDIZE
from .fused import IBNormFunction, fused_ib_norm

IMPLS = ("auto", "fused", "reference")
OP_CODES = {"power": 0, "log": 1, "tanh": 2, "none": 3}  # the compiled kernels' op numbering


def strength_value(lam_t: Optional[Tensor], lam: Optional[float]) -> float:
    """The strength as the compiled kernels take it: a number (1.0 stands in for the identity op's none)."""
    if lam_t is not None:
        return float(lam_t)
    return lam if lam is not None else 1.0


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}; got {impl!r}")
    return impl


def use_fast_path(impl: str) -> bool:
    """Whether a layer with this ``impl`` takes the fast path now."""
    if impl == "reference":
        return False
    if impl == "fused":
        return True
    return os.environ.get("IBNORM_IMPL", "auto") != "reference"


def fast_ib_norm(x: Tensor, dims: Sequence[int], centered: bool, eps: float, compression: str, strength,
                 order: str, weight: Optional[Tensor], bias: Optional[Tensor], wview: Sequence[int]):
    """The fastest available implementation for this call: ``(y, stats)`` as :func:`fused_ib_norm`."""
    from . import cpu, triton_rows
    group_shape = tuple(x.shape[d] for d in dims)
    m = 1
    for d in group_shape:
        m *= d
    # The row kernels apply the affine map per element of a group: layer and RMS grouping.
    rows = tuple(wview) == group_shape and tuple(dims) == tuple(range(x.dim() - len(dims), x.dim()))
    kernel = None
    if rows and triton_rows.supports(x, m):
        kernel = triton_rows.TritonRowsFunction
    elif rows and cpu.supports(x, dims):
        kernel = cpu.CPURowsFunction
    if kernel is not None:
        lam_t = strength if isinstance(strength, Tensor) else None
        lam = None if lam_t is not None else strength
        y = kernel.apply(x, weight, bias, lam_t, m, centered, float(eps), compression, lam,
                         order == COMPRESS_THEN_STANDARDIZE)
        return y, None
    return fused_ib_norm(x, dims, centered, eps, compression, strength, order, weight, bias, wview)


__all__ = ["IBNormFunction", "fused_ib_norm", "fast_ib_norm", "use_fast_path", "check_impl", "IMPLS"]
