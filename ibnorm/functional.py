"""The functional API of IBNorm: one function per grouping, like ``torch.nn.functional.layer_norm``.

Each takes the base norm's arguments, then ``compression``, ``strength`` (a float, or a tensor for a
learned strength), ``order`` and ``impl``, and dispatches:

- ``impl="auto"``: the fastest kernel that runs this input: Triton on CUDA (layer and RMS grouping; under
  ``torch.compile``, the reference for Inductor to fuse where :mod:`ibnorm.kernels.cuda_choice` measured that faster),
  the C++ kernel on CPU (every grouping, once built), otherwise the autograd Function;
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
from .kernels import cpu, cuda_choice
from .kernels.autograd import ib_norm_autograd
from .ops import COMPRESS_THEN_STANDARDIZE, Strength, check_order, get_compression, resolve_strength
from .reference import GroupStats, Reduce


def _dispatch(impl: Optional[str], *tensors) -> str:
    """``impl`` as it runs for these arguments: under forward-mode AD (dual tensors) or a ``torch.func`` transform
    (``jacrev``, ``jvp``, ``vmap``, ``grad``...), whose wrapped tensors the compiled kernels cannot take, ``auto``
    runs the reference, which is plain PyTorch and supports them all; an explicit kernel is refused by name."""
    impl = resolve_impl(impl)
    if impl == "reference" or torch.compiler.is_compiling():
        return impl
    ts = [t for t in tensors if isinstance(t, Tensor)]
    transformed = any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in ts)
    dual = any(t.layout == torch.strided and torch.autograd.forward_ad.unpack_dual(t).tangent is not None for t in ts)
    if not (transformed or dual):
        return impl
    if impl != "auto":
        raise ValueError(f"impl={impl!r} cannot run under forward-mode AD or a torch.func transform; use impl='auto' "
                         "(which runs the reference there) or impl='reference'")
    return "reference"


def _check_arguments(input: Tensor, affine_shape: Sequence[int], weight: Optional[Tensor], bias: Optional[Tensor],
                     compression: str, strength: Optional[Strength],
                     running: Optional[GroupStats] = None) -> Optional[Strength]:
    """What the layers guarantee by construction, checked for direct callers: the affine and running-statistic shapes
    and the strength's range (with the layers' errors). Returns the strength to use: a number or None becomes the
    op's value (None: its default), a tensor (a learned strength) stays."""
    if torch.compiler.is_compiling():  # the layers checked these already; tracing them would break the graph
        op = get_compression(compression)
        return op.default if strength is None and op.has_strength else strength
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a Tensor; got {type(input).__name__}")
    shape = tuple(affine_shape)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} (the input's normalized shape or channels); "
                             f"got {tuple(t.shape)}")
    if running is not None:
        for name, t in zip(GroupStats._fields, running):
            if t is not None and tuple(t.shape) != shape:
                raise ValueError(f"running statistics must have shape {shape}; got {name} of shape {tuple(t.shape)}")
    if isinstance(strength, Tensor):
        get_compression(compression)
        if strength.numel() != 1 or not strength.is_floating_point():
            raise ValueError(f"strength must be a float or a 1-element float tensor; got a tensor of shape "
                             f"{tuple(strength.shape)} and dtype {strength.dtype}")
        return strength
    return resolve_strength(compression, strength)


def _rows(x: Tensor, m: int, centered: bool, eps: float, compression: str, strength: Optional[Strength], order: str,
          weight: Optional[Tensor], bias: Optional[Tensor], affine_shape: tuple, impl: str) -> Optional[Tensor]:
    """Groups of the last ``m`` values of ``x`` on a compiled kernel, or None when none runs them under ``impl``.
    ``affine_shape``: ``(m,)``, or ``(P, m)`` when row i takes affine row i % P (group grouping)."""
    cts = order == COMPRESS_THEN_STANDARDIZE
    if impl in ("auto", "triton") and x.is_cuda and affine_shape == (m,):
        from .kernels import triton_rows  # imports triton: only when a CUDA tensor arrives
        if triton_rows.supports(x, m):
            return triton_rows.ib_rows(x, weight, bias, strength, m, centered, eps, compression, cts)
    if impl in ("auto", "cpu") and cpu.supports(x):
        return cpu.ib_rows(x, weight, bias, strength, m, centered, eps, compression, cts, affine_shape)
    return None


def _refuse(impl: str, x: Tensor, grouping: str) -> None:
    """A named compiled kernel that cannot run this input says so (``auto`` falls back instead)."""
    if impl == "cpu":
        raise ValueError(f"impl='cpu' runs float32/bfloat16/float16 CPU tensors once the C++ kernel is built "
                         f"({cpu._failed or 'not built'}); got a {x.dtype} {x.device.type} input: use impl='auto'")
    if impl == "triton":
        raise ValueError(f"impl='triton' runs layer and RMS grouping of CUDA tensors with triton installed; got "
                         f"{grouping} grouping of a {x.dtype} {x.device.type} input: use impl='auto'")


def _autograd(x: Tensor, dims: Sequence[int], centered: bool, eps: float, compression: str,
              strength: Optional[Strength], order: str, weight: Optional[Tensor], bias: Optional[Tensor],
              wview: Sequence[int], impl: str, grouping: str) -> tuple[Tensor, tuple]:
    _refuse(impl, x, grouping)
    return ib_norm_autograd(x, dims, centered, eps, compression, strength, order, weight, bias, wview)


def _last_dims(input: Tensor, normalized_shape: Union[int, Sequence[int]], weight: Optional[Tensor],
               bias: Optional[Tensor], eps: Optional[float], centered: bool, compression: str, strength: Optional[Strength],
               order: str, impl: str) -> Tensor:
    """Layer (``centered``) and RMS grouping: groups are the last ``len(normalized_shape)`` dims."""
    shape = R.normalized_shape_of(normalized_shape)
    R.check_trailing(input, shape)
    check_order(order)
    eps = R.default_eps(input.dtype) if eps is None else eps  # nn.RMSNorm's convention
    m = math.prod(shape)
    y = _rows(input, m, centered, eps, compression, strength, order, weight, bias, (m,), impl)
    if y is not None:
        return y
    dims = tuple(range(input.dim() - len(shape), input.dim()))
    return _autograd(input, dims, centered, eps, compression, strength, order, weight, bias, shape, impl,
                     "layer" if centered else "RMS")[0]


def ib_layer_norm(input: Tensor, normalized_shape: Union[int, Sequence[int]], weight: Optional[Tensor] = None,
                  bias: Optional[Tensor] = None, eps: float = 1e-5, compression: str = "power",
                  strength: Optional[Strength] = None, order: str = COMPRESS_THEN_STANDARDIZE,
                  impl: Optional[str] = "auto") -> Tensor:
    """IBNorm with LayerNorm's grouping: each group is the last ``len(normalized_shape)`` dims."""
    strength = _check_arguments(input, R.normalized_shape_of(normalized_shape), weight, bias, compression, strength)
    impl = _dispatch(impl, input, weight, bias, strength)
    if impl == "reference" or (impl == "auto" and cuda_choice.compiled_reference_is_faster(input, "layer", compression)):
        return R.ib_layer_norm(input, normalized_shape, weight, bias, eps, compression, strength, order)
    return _last_dims(input, normalized_shape, weight, bias, eps, True, compression, strength, order, impl)


def ib_rms_norm(input: Tensor, normalized_shape: Union[int, Sequence[int]], weight: Optional[Tensor] = None,
                eps: Optional[float] = None, compression: str = "power", strength: Optional[Strength] = None,
                order: str = COMPRESS_THEN_STANDARDIZE, impl: Optional[str] = "auto") -> Tensor:
    """IBNorm with RMSNorm's grouping (no centering). ``eps=None`` means ``finfo`` of the dtype it computes in (float32
    for bfloat16/float16), as ``nn.RMSNorm``."""
    strength = _check_arguments(input, R.normalized_shape_of(normalized_shape), weight, None, compression, strength)
    impl = _dispatch(impl, input, weight, strength)
    if impl == "reference" or (impl == "auto" and cuda_choice.compiled_reference_is_faster(input, "rms", compression)):
        return R.ib_rms_norm(input, normalized_shape, weight, eps, compression, strength, order)
    return _last_dims(input, normalized_shape, weight, None, eps, False, compression, strength, order, impl)


def ib_group_norm(input: Tensor, num_groups: int, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
                  eps: float = 1e-5, compression: str = "power", strength: Optional[Strength] = None,
                  order: str = COMPRESS_THEN_STANDARDIZE, impl: Optional[str] = "auto") -> Tensor:
    """IBNorm with GroupNorm's grouping: per sample, per group of ``C // num_groups`` channels (and all spatial dims)."""
    R.check_channels(input)
    if weight is not None and input.shape[1] != weight.numel():
        raise ValueError(f"input must have shape (N, {weight.numel()}, *); got {list(input.shape)}")
    strength = _check_arguments(input, (input.shape[1],), weight, bias, compression, strength)
    impl = _dispatch(impl, input, weight, bias, strength)
    if impl == "reference":
        return R.ib_group_norm(input, num_groups, weight, bias, eps, compression, strength, order)
    check_order(order)
    n, ch, spatial = input.shape[0], input.shape[1], tuple(input.shape[2:])
    if ch % num_groups != 0:
        raise ValueError(f"input must have a channel count divisible by num_groups={num_groups}; got C={ch}")
    per, size = ch // num_groups, math.prod(spatial)
    # One row per (sample, group); the per-channel affine map repeats over each channel's spatial positions.
    affine = [None if t is None else t.reshape(num_groups, per, 1).expand(num_groups, per, size)
              .reshape(num_groups, per * size) for t in (weight, bias)]
    xr = input.reshape(n * num_groups, per * size)
    y = _rows(xr, per * size, True, eps, compression, strength, order, *affine, (num_groups, per * size), impl)
    if y is None:
        xg = input.reshape(n, num_groups, per, *spatial)  # groups reduce over dims 2..
        y, _ = _autograd(xg, tuple(range(2, xg.dim())), True, eps, compression, strength, order, weight, bias,
                         (num_groups, per) + (1,) * len(spatial), impl, "group")
    return y.reshape(input.shape)


def ib_batch_norm(input: Tensor, running_stats: Optional[GroupStats], weight: Optional[Tensor] = None,
                  bias: Optional[Tensor] = None, training: bool = True, momentum: float = 0.1, eps: float = 1e-5,
                  compression: str = "power", strength: Optional[Strength] = None,
                  order: str = COMPRESS_THEN_STANDARDIZE, reduce: Optional[Reduce] = None,
                  impl: Optional[str] = "auto") -> Tensor:
    """IBNorm with BatchNorm's grouping: per channel (dim 1) over the batch and spatial dims.

    ``running_stats`` (the five running buffers, or None), ``training``, ``momentum`` (the resolved factor)
    and ``reduce`` (a sum over processes) are as in :func:`ibnorm.reference.ib_batch_norm`. The C++ kernel takes
    batch statistics of this process, or with ``reduce`` runs in passes with the sums over processes between them
    (:class:`ibnorm.kernels.cpu.SyncChannels`); eval with running statistics runs on the reference.
    """
    R.check_channels(input)
    strength = _check_arguments(input, (input.shape[1],), weight, bias, compression, strength, running_stats)
    impl = _dispatch(impl, input, weight, bias, strength)
    use_batch = training or running_stats is None
    if reduce is not None and use_batch and impl in ("auto", "cpu") and cpu.supports(input):
        R.check_channels(input)
        check_order(order)
        y, st = cpu.ib_channels_sync(input, weight, bias, strength, eps, compression,
                                     order == COMPRESS_THEN_STANDARDIZE, reduce)
        if training:
            R.check_batch_count(st["count"], input)
            if running_stats is not None and st["count"] > 0:
                R.update_running(running_stats, GroupStats(st["mean_x"], st["var_x"], st["mean_c"], st["var_c"],
                                                           st["var_u"]), momentum, st["count"])
        return y
    if impl == "reference" or reduce is not None or not use_batch:
        return R.ib_batch_norm(input, running_stats, weight, bias, training, momentum, eps, compression, strength,
                               order, reduce)
    R.check_channels(input)
    check_order(order)
    count = input.numel() // input.shape[1]
    if training:
        R.check_batch_count(count, input)
    if impl in ("auto", "cpu") and cpu.supports(input):
        y, st = cpu.ib_channels(input, weight, bias, strength, eps, compression, order == COMPRESS_THEN_STANDARDIZE)
        steps3 = get_compression(compression).has_strength and order == COMPRESS_THEN_STANDARDIZE
        stats = (st[:, 0], st[:, 2]) + ((st[:, 3], st[:, 4], st[:, 5]) if steps3 else (None, None, None))
    else:
        dims = (0,) + tuple(range(2, input.dim()))
        wview = (input.shape[1],) + (1,) * (input.dim() - 2)
        y, stats = _autograd(input, dims, True, eps, compression, strength, order, weight, bias, wview, impl, "batch")
        stats = tuple(t if t.numel() else None for t in stats)
    if training and running_stats is not None and count > 0:
        R.update_running(running_stats, GroupStats(*stats), momentum, count)
    return y


__all__ = ["ib_layer_norm", "ib_rms_norm", "ib_group_norm", "ib_batch_norm"]
