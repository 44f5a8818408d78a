"""The functional API of IBNorm: one function per grouping, like ``torch.nn.functional.layer_norm``.

Each takes the base norm's arguments, then ``compression``, ``strength`` (a float, or a tensor for a
learned strength), ``order`` and ``impl``, and dispatches:

- ``impl="auto"``: the fastest kernel that runs this input: Triton on CUDA (layer and RMS grouping),
  the C++ kernel on CPU (layer and RMS grouping, once built), otherwise the autograd Function;
- ``"triton"``, ``"cpu"``, ``"autograd"``: that kernel, or a ``ValueError`` when it cannot run the input;
- ``"reference"``: :mod:`ibnorm.reference`, the plain transcription of the definition;
- ``None``: ``IBNORM_IMPL`` (:mod:`ibnorm.config`), default ``auto``.

Every path computes the same function (``tests/test_kernels.py``); the kernels save only the input and
per-group statistics for backward.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from . import reference as R
from .config import resolve_impl
from .kernels import cpu
from .kernels.autograd import ib_norm_autograd
from .ops import COMPRESS_THEN_STANDARDIZE, Strength, check_order
from .reference import GroupStats, Reduce


def _row_kernel(x: Tensor, m: int, impl: str):
    """The compiled kernel that runs last-dimension groups of ``m`` values of ``x`` under ``impl``, or None."""
    if impl in ("auto", "triton") and x.is_cuda:
        from .kernels import triton_rows  # imports triton: only when a CUDA tensor arrives
        if triton_rows.supports(x, m):
            return triton_rows.TritonRowsFunction
    if impl in ("auto", "cpu") and cpu.supports(x):
        return cpu.CPURowsFunction
    return None


def _kernel(x: Tensor, dims: Sequence[int], centered: bool, eps: float, compression: str, strength: Optional[Strength],
            order: str, weight: Optional[Tensor], bias: Optional[Tensor], wview: Sequence[int],
            impl: str) -> tuple[Tensor, Optional[tuple]]:
    """``(y, statistics)`` from a kernel; the statistics (``(mean_x, var_x, mean_c, var_c, var_u)``, empty
    tensors for those unused) come from the autograd Function only, the row kernels give None."""
    group_shape = tuple(x.shape[d] for d in dims)
    # The row kernels apply the affine map per element of a group: layer and RMS grouping.
    rows = tuple(wview) == group_shape and tuple(dims) == tuple(range(x.dim() - len(dims), x.dim()))
    kernel = _row_kernel(x, math.prod(group_shape), impl) if rows else None
    if kernel is not None:
        lam_t = strength if isinstance(strength, Tensor) else None
        lam = None if lam_t is not None else strength
        y = kernel.apply(x, weight, bias, lam_t, math.prod(group_shape), centered, float(eps), compression, lam,
                         order == COMPRESS_THEN_STANDARDIZE)
        return y, None
    if impl in ("cpu", "triton"):
        device = "CUDA" if impl == "triton" else "CPU"
        raise ValueError(f"impl={impl!r} runs layer and RMS grouping of float32/bfloat16/float16 {device} tensors"
                         f"{' once the C++ kernel is built' if impl == 'cpu' else ' with triton installed'}; got a "
                         f"{x.dtype} {x.device.type} input grouped over dims {tuple(dims)}: use impl='auto'")
    return ib_norm_autograd(x, dims, centered, eps, compression, strength, order, weight, bias, wview)


def _trailing_dims(x: Tensor, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(range(x.dim() - len(shape), x.dim()))


def ib_layer_norm(input: Tensor, normalized_shape: Union[int, Sequence[int]], weight: Optional[Tensor] = None,
                  bias: Optional[Tensor] = None, eps: float = 1e-5, compression: str = "power",
                  strength: Optional[Strength] = None, order: str = COMPRESS_THEN_STANDARDIZE,
                  impl: Optional[str] = "auto") -> Tensor:
    """IBNorm with LayerNorm's grouping: each group is the last ``len(normalized_shape)`` dims."""
    impl = resolve_impl(impl)
    if impl == "reference":
        return R.ib_layer_norm(input, normalized_shape, weight, bias, eps, compression, strength, order)
    shape = R.normalized_shape_of(normalized_shape)
    R.check_trailing(input, shape)
    check_order(order)
    return _kernel(input, _trailing_dims(input, shape), True, eps, compression, strength, order, weight, bias,
                   shape, impl)[0]


def ib_rms_norm(input: Tensor, normalized_shape: Union[int, Sequence[int]], weight: Optional[Tensor] = None,
                eps: Optional[float] = None, compression: str = "power", strength: Optional[Strength] = None,
                order: str = COMPRESS_THEN_STANDARDIZE, impl: Optional[str] = "auto") -> Tensor:
    """IBNorm with RMSNorm's grouping (no centering). ``eps=None`` means ``finfo(input dtype).eps``, as ``nn.RMSNorm``."""
    impl = resolve_impl(impl)
    if impl == "reference":
        return R.ib_rms_norm(input, normalized_shape, weight, eps, compression, strength, order)
    shape = R.normalized_shape_of(normalized_shape)
    R.check_trailing(input, shape)
    check_order(order)
    eps = torch.finfo(input.dtype).eps if eps is None else eps
    return _kernel(input, _trailing_dims(input, shape), False, eps, compression, strength, order, weight, None,
                   shape, impl)[0]


def ib_group_norm(input: Tensor, num_groups: int, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
                  eps: float = 1e-5, compression: str = "power", strength: Optional[Strength] = None,
                  order: str = COMPRESS_THEN_STANDARDIZE, impl: Optional[str] = "auto") -> Tensor:
    """IBNorm with GroupNorm's grouping: per sample, per group of ``C // num_groups`` channels (and all spatial dims)."""
    R.check_channels(input)
    if weight is not None and input.shape[1] != weight.numel():
        raise ValueError(f"input must have shape (N, {weight.numel()}, *); got {list(input.shape)}")
    impl = resolve_impl(impl)
    if impl == "reference":
        return R.ib_group_norm(input, num_groups, weight, bias, eps, compression, strength, order)
    check_order(order)
    n, ch, spatial = input.shape[0], input.shape[1], tuple(input.shape[2:])
    if ch % num_groups != 0:
        raise ValueError(f"input must have a channel count divisible by num_groups={num_groups}; got C={ch}")
    per = ch // num_groups
    xg = input.reshape(n, num_groups, per, *spatial)  # groups reduce over dims 2..
    y, _ = _kernel(xg, tuple(range(2, xg.dim())), True, eps, compression, strength, order, weight, bias,
                   (num_groups, per) + (1,) * len(spatial), impl)
    return y.reshape(input.shape)


def ib_batch_norm(input: Tensor, running_stats: Optional[GroupStats], weight: Optional[Tensor] = None,
                  bias: Optional[Tensor] = None, training: bool = True, momentum: float = 0.1, eps: float = 1e-5,
                  compression: str = "power", strength: Optional[Strength] = None,
                  order: str = COMPRESS_THEN_STANDARDIZE, reduce: Optional[Reduce] = None,
                  impl: Optional[str] = "auto") -> Tensor:
    """IBNorm with BatchNorm's grouping: per channel (dim 1) over the batch and spatial dims.

    ``running_stats`` (the five running buffers, or None), ``training``, ``momentum`` (the resolved factor)
    and ``reduce`` (a sum over processes) are as in :func:`ibnorm.reference.ib_batch_norm`. The kernels
    take batch statistics of this process; eval with running statistics, and statistics summed over
    processes, run on the reference.
    """
    impl = resolve_impl(impl)
    use_batch = training or running_stats is None
    if impl == "reference" or reduce is not None or not use_batch:
        return R.ib_batch_norm(input, running_stats, weight, bias, training, momentum, eps, compression, strength,
                               order, reduce)
    R.check_channels(input)
    check_order(order)
    count = input.numel() // input.shape[1]
    if training:
        R.check_batch_count(count, input)
    dims = (0,) + tuple(range(2, input.dim()))
    wview = (input.shape[1],) + (1,) * (input.dim() - 2)
    y, stats = _kernel(input, dims, True, eps, compression, strength, order, weight, bias, wview, impl)
    if training and running_stats is not None:
        R.update_running(running_stats, GroupStats(*[t if t.numel() else None for t in stats]), momentum, count)
    return y


__all__ = ["ib_layer_norm", "ib_rms_norm", "ib_group_norm", "ib_batch_norm"]
