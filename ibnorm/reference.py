"""The definition of IBNorm, steps 1-4 for every grouping, transcribed in plain PyTorch (``docs/method.md``).

This is what every kernel is tested against; it is not the fast path (:mod:`ibnorm.functional` dispatches).

For one group with values ``x`` (biased statistics, the layer's ``eps``):

1. base normalization   ``u = (x - mean(x)) / sqrt(var(x) + eps)``   (RMS: ``u = x / sqrt(mean(x^2) + eps)``)
2. compression          ``c = s(u)``                                  (see :mod:`ibnorm.ops`)
3. standardization      ``z = (c - mean(c)) * sqrt((var(u) + eps) / (var(c) + eps))``
                        (RMS: ``z = c * sqrt((mean(u^2) + eps) / (mean(c^2) + eps))``)
4. recovery             ``y = weight * z + bias``

``order="standardize_then_compress"`` stops after step 2 (the paper's order ablation). The ``none``
compression skips step 3, since ``c = u`` gives ``z = u`` exactly.

Precision policy: statistics, compression and the affine map are computed in float32 (float64
inputs stay float64), and the result is cast back to the input dtype, as PyTorch's fused CPU norms
do for half types. The kernels (:mod:`ibnorm.kernels`) must match this module.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor

from .ops import COMPRESS_THEN_STANDARDIZE, Strength, check_order, compress, get_compression


class GroupStats(NamedTuple):
    """Per-group statistics of one forward pass (shapes broadcast against the input)."""

    mean_x: Optional[Tensor]  # None for RMS grouping
    var_x: Tensor  # var(x) (RMS: mean(x^2)), biased
    mean_c: Optional[Tensor]  # None when step 3 is skipped or RMS grouping
    var_c: Optional[Tensor]  # var(c) (RMS: mean(c^2)), biased; None when step 3 is skipped
    var_u: Optional[Tensor]  # var(u) (RMS: mean(u^2)), biased; None when step 3 is skipped


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def default_eps(dtype: torch.dtype) -> float:
    """``eps=None``'s value, as ``nn.RMSNorm`` computes it: the machine epsilon of the dtype it accumulates in
    (float32 for bfloat16/float16/float32 inputs, float64 for float64), not of the input's own dtype."""
    return torch.finfo(compute_dtype(dtype)).eps


def _strength_as(strength: Optional[Strength], like: Tensor) -> Optional[Strength]:
    if isinstance(strength, Tensor):
        return strength.to(like.dtype)
    return strength


Reduce = Callable[[Tensor], Tensor]  # sums a tensor over processes (differentiably); None = this process only


def _moments(t: Tensor, dims: Sequence[int], centered: bool, reduce: Optional[Reduce] = None) -> tuple[Optional[Tensor], Tensor]:
    """(mean, biased var) when centered, else (None, mean square), over ``dims`` (and processes with ``reduce``)."""
    dims = tuple(dims)
    if reduce is None:
        if centered:
            var, mean = torch.var_mean(t, dim=dims, correction=0, keepdim=True)
            return mean, var
        return None, t.square().mean(dim=dims, keepdim=True)
    # Two passes (mean, then centred squares) over all processes: as accurate as the local var_mean.
    count = reduce(torch.tensor(float(math.prod(t.shape[d] for d in dims)), dtype=t.dtype, device=t.device))
    if not centered:
        return None, reduce(t.square().sum(dim=dims, keepdim=True)) / count
    mean = reduce(t.sum(dim=dims, keepdim=True)) / count
    return mean, reduce((t - mean).square().sum(dim=dims, keepdim=True)) / count


def _step1(x: Tensor, mean_x: Optional[Tensor], var_x: Tensor, centered: bool, eps: float) -> Tensor:
    """Step 1, base normalization, with the given statistics."""
    return (x - mean_x if centered else x) * torch.rsqrt(var_x + eps)


def base_normalize(x: Tensor, dims: Sequence[int], centered: bool, eps: float,
                   reduce: Optional[Reduce] = None) -> Tensor:
    """Step 1 with the group's own statistics."""
    return _step1(x, *_moments(x, dims, centered, reduce), centered, eps)


def ib_core(
    x: Tensor,
    dims: Sequence[int],
    centered: bool,
    eps: float,
    compression: str,
    strength: Optional[Strength],
    order: str = COMPRESS_THEN_STANDARDIZE,
    running: Optional[GroupStats] = None,
    reduce: Optional[Reduce] = None,
) -> tuple[Tensor, GroupStats]:
    """Steps 1-3 of the definition on ``x`` (already in the compute dtype), groups reduced over ``dims``.

    With ``running`` given (batch grouping in eval), its statistics replace the batch's.
    Returns ``z`` and the statistics of this pass (the running ones when ``running`` was used).
    ``reduce`` sums over processes, so that the statistics are those of the global batch.
    """
    op = get_compression(compression)
    strength = _strength_as(strength, x)
    if running is None:
        mean_x, var_x = _moments(x, dims, centered, reduce)
    else:
        mean_x, var_x = running.mean_x, running.var_x
    u = _step1(x, mean_x, var_x, centered, eps)
    if not op.has_strength:
        return u, GroupStats(mean_x, var_x, None, None, None)
    c = compress(u, op.name, strength)
    if order != COMPRESS_THEN_STANDARDIZE:
        return c, GroupStats(mean_x, var_x, None, None, None)
    if running is None:
        _, var_u = _moments(u, dims, centered, reduce)
        mean_c, var_c = _moments(c, dims, centered, reduce)
    else:
        var_u, mean_c, var_c = running.var_u, running.mean_c, running.var_c
    scale = torch.sqrt((var_u + eps) / (var_c + eps))
    z = (c - mean_c if centered else c) * scale
    return z, GroupStats(mean_x, var_x, mean_c, var_c, var_u)


def _affine(z: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], view: Sequence[int]) -> Tensor:
    if weight is not None:
        z = z * weight.to(z.dtype).reshape(view)
    if bias is not None:
        z = z + bias.to(z.dtype).reshape(view)
    return z


def normalized_shape_of(normalized_shape: Union[int, Sequence[int]]) -> tuple[int, ...]:
    if isinstance(normalized_shape, int):
        return (normalized_shape,)
    return tuple(normalized_shape)


def check_trailing(x: Tensor, shape: tuple[int, ...]) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"input must be a torch.Tensor; got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor; got dtype {x.dtype}")
    if x.dim() < len(shape) or tuple(x.shape[x.dim() - len(shape):]) != shape:
        raise ValueError(f"input must end with normalized_shape {list(shape)}; got input of shape {list(x.shape)}")


def check_channels(x: Tensor) -> None:
    """Channel-first groupings (group, batch) take a floating-point ``(N, C, *)`` input."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError("input must be a floating-point torch.Tensor")
    if x.dim() < 2:
        raise ValueError(f"input must have shape (N, C, *); got input of shape {list(x.shape)}")


def _ib_last_dims(x: Tensor, normalized_shape, weight: Optional[Tensor], bias: Optional[Tensor], eps: float,
                  centered: bool, compression: str, strength: Optional[Strength], order: str) -> Tensor:
    shape = normalized_shape_of(normalized_shape)
    check_trailing(x, shape)
    check_order(order)
    dims = tuple(range(x.dim() - len(shape), x.dim()))
    z, _ = ib_core(x.to(compute_dtype(x.dtype)), dims, centered, eps, compression, strength, order)
    return _affine(z, weight, bias, shape).to(x.dtype)


def ib_layer_norm(
    x: Tensor,
    normalized_shape: Union[int, Sequence[int]],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    compression: str = "power",
    strength: Optional[Strength] = None,
    order: str = COMPRESS_THEN_STANDARDIZE,
) -> Tensor:
    """IBNorm with LayerNorm's grouping: each group is the last ``len(normalized_shape)`` dims."""
    return _ib_last_dims(x, normalized_shape, weight, bias, eps, True, compression, strength, order)


def ib_rms_norm(
    x: Tensor,
    normalized_shape: Union[int, Sequence[int]],
    weight: Optional[Tensor] = None,
    eps: Optional[float] = None,
    compression: str = "power",
    strength: Optional[Strength] = None,
    order: str = COMPRESS_THEN_STANDARDIZE,
) -> Tensor:
    """IBNorm with RMSNorm's grouping (no centering). ``eps=None`` means :func:`default_eps`, as ``nn.RMSNorm``."""
    if eps is None and isinstance(x, Tensor) and x.is_floating_point():
        eps = default_eps(x.dtype)
    return _ib_last_dims(x, normalized_shape, weight, None, eps, False, compression, strength, order)


def ib_group_norm(
    x: Tensor,
    num_groups: int,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    compression: str = "power",
    strength: Optional[Strength] = None,
    order: str = COMPRESS_THEN_STANDARDIZE,
) -> Tensor:
    """IBNorm with GroupNorm's grouping: per sample, per group of ``C // num_groups`` channels (and all spatial dims)."""
    check_channels(x)
    check_order(order)
    n, ch = x.shape[0], x.shape[1]
    if ch % num_groups != 0:
        raise ValueError(f"input must have a channel count divisible by num_groups={num_groups}; got C={ch}")
    xc = x.to(compute_dtype(x.dtype)).reshape(n, num_groups, -1)
    z, _ = ib_core(xc, (2,), True, eps, compression, strength, order)
    z = z.reshape(x.shape)
    view = [ch] + [1] * (x.dim() - 2)
    return _affine(z, weight, bias, view).to(x.dtype)


def ib_batch_norm(
    x: Tensor,
    running_stats: Optional[GroupStats],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    compression: str = "power",
    strength: Optional[Strength] = None,
    order: str = COMPRESS_THEN_STANDARDIZE,
    reduce: Optional[Reduce] = None,
) -> Tensor:
    """IBNorm with BatchNorm's grouping: per channel (dim 1) over the batch and spatial dims.

    ``running_stats`` holds the running buffers (``mean_x``, ``var_x``, ``mean_c``, ``var_c``,
    ``var_u``, each of shape ``[C]``) or is ``None``. In training (or without running buffers) the
    batch statistics are used; in training the buffers are updated in place with
    ``(1 - momentum) * old + momentum * new``, variances with the unbiased ``n / (n - 1)`` factor,
    exactly as ``nn.BatchNorm`` does. ``momentum`` here is the already-resolved factor (for a
    cumulative average the caller passes ``1 / num_batches_tracked``). In eval the buffers replace
    the batch statistics in steps 1 and 3. ``reduce`` (sum over processes) makes the batch
    statistics those of the global batch (:class:`ibnorm.distributed.IBSyncBatchNorm`).
    """
    check_channels(x)
    check_order(order)
    ch = x.shape[1]
    dims = (0,) + tuple(range(2, x.dim()))
    view = [1, ch] + [1] * (x.dim() - 2)
    xc = x.to(compute_dtype(x.dtype))
    use_batch = training or running_stats is None
    if use_batch:
        count = x.numel() // ch
        if reduce is not None:
            count = int(reduce(torch.tensor(float(count), device=x.device)).item())
        if training:
            check_batch_count(count, x)
        z, stats = ib_core(xc, dims, True, eps, compression, strength, order, reduce=reduce)
        if training and running_stats is not None and count > 0:
            update_running(running_stats, stats, momentum, count)
    else:
        run = GroupStats(*[None if t is None else t.to(xc.dtype).reshape(view) for t in running_stats])
        z, _ = ib_core(xc, dims, True, eps, compression, strength, order, running=run)
    return _affine(z, weight, bias, view).to(x.dtype)


def check_batch_count(count: int, x: Tensor) -> None:
    """Batch statistics in training need more than one value per channel (as ``nn.BatchNorm``; an empty batch passes
    and updates nothing)."""
    if count == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {list(x.shape)}")


@torch.no_grad()
def update_running(running: GroupStats, batch: GroupStats, momentum: float, count: int) -> None:
    unbias = count / max(count - 1, 1)
    for buf, new, is_var in (
        (running.mean_x, batch.mean_x, False),
        (running.var_x, batch.var_x, True),
        (running.mean_c, batch.mean_c, False),
        (running.var_c, batch.var_c, True),
        (running.var_u, batch.var_u, True),
    ):
        if buf is None or new is None:
            continue  # a statistic this configuration does not use
        new = new.detach().reshape(-1).to(buf.dtype)
        if is_var:
            new = new * unbias
        buf.mul_(1.0 - momentum).add_(new, alpha=momentum)


def contraction_ratio(u: Tensor, compression: str, strength: Optional[Strength], dims: Sequence[int], centered: bool = True) -> Tensor:
    """The diagnostic ``var(s(u)) / var(u)`` (RMS: ratio of mean squares), averaged over groups."""
    c = compress(u, compression, _strength_as(strength, u))
    _, vu = _moments(u, dims, centered)
    _, vc = _moments(c, dims, centered)
    return (vc / vu.clamp_min(torch.finfo(vu.dtype).tiny)).mean()
