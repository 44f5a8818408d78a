"""Synchronized batch IBNorm: batch statistics over every process of a group, with an exact backward."""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from .layers import _IBBatchNorm
from .reference import Reduce


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes of a group; backward sums the incoming gradients the same way, which is
    the exact gradient of the sum of every process's loss."""

    @staticmethod
    def forward(ctx, t: Tensor, group: Any) -> Tensor:
        ctx.group = group
        out = t.clone()
        tdist.all_reduce(out, op=tdist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.clone()
        tdist.all_reduce(grad, op=tdist.ReduceOp.SUM, group=ctx.group)
        return grad, None


class IBSyncBatchNorm(_IBBatchNorm):
    """Batch-grouped IBNorm whose statistics (steps 1 and 3) are those of the global batch.

    Like ``nn.SyncBatchNorm``: input ``(N, C, *)``; in training, every mean and variance is summed
    over the processes of ``process_group`` (two passes, differentiable all-reduces, so the backward
    is exact); running statistics are therefore identical on every rank. On CPU the C++ channel kernel runs in
    passes with the sums over processes between them (:class:`ibnorm.kernels.cpu.SyncChannels`); elsewhere, or with
    ``impl="reference"``, the plain-PyTorch definition does. Outside a process group, or in eval, it is
    :class:`ibnorm.IBBatchNorm2d` for any input rank (fast path included).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group: Any = None, device=None, dtype=None,
                 **ib_kwargs: Any) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, **ib_kwargs)
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2 or input.shape[1] != self.num_features:
            raise ValueError(f"input must have shape (N, {self.num_features}, *); got {list(input.shape)}")

    def _reduce(self) -> Optional[Reduce]:
        if not (self.training and tdist.is_available() and tdist.is_initialized()):
            return None
        if tdist.get_world_size(self.process_group) == 1:
            return None
        group = self.process_group
        return lambda t: _AllReduceSum.apply(t, group)


def convert_sync_ibnorm(module: nn.Module, process_group: Any = None) -> nn.Module:
    """Replace every batch-grouped IBNorm (and every ``nn.BatchNorm*d``, as the identity op, which equals it)
    by :class:`IBSyncBatchNorm`, keeping state; like ``nn.SyncBatchNorm.convert_sync_batchnorm``.

    ``nn.BatchNorm`` is converted too because ``nn.SyncBatchNorm`` runs on GPUs only; at the identity
    compression the IBNorm layer computes exactly BatchNorm.
    """
    out = module
    if isinstance(module, _IBBatchNorm) and not isinstance(module, IBSyncBatchNorm):
        out = IBSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats, process_group, compression=module.compression,
                              strength=module.init_strength, learnable_strength=module.learnable_strength,
                              order=module.order, impl=module.impl)
    elif isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, nn.SyncBatchNorm):
        out = IBSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats, process_group, compression="none")
    if out is not module:
        ref = next(iter(list(module.parameters()) + list(module.buffers())), None)
        if ref is not None:
            out.to(device=ref.device)
        with torch.no_grad():
            own = out.state_dict()
            own.update({k: v for k, v in module.state_dict().items() if k in own})
            out.load_state_dict(own)
        out.to(dtype=module.weight.dtype if getattr(module, "weight", None) is not None else torch.float32)
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_sync_ibnorm(child, process_group))
    return out
