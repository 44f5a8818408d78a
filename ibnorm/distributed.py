"""Multi-process training support: the process context the trainer uses, and synchronized batch IBNorm.

Launch with ``torchrun`` (see the README): the trainer reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``,
joins the process group (gloo on CPU, NCCL on CUDA) and wraps the model in
``DistributedDataParallel``. ``IBNORM_DIST_TIMEOUT`` (seconds, default 120) bounds every collective
and the start-up rendezvous, so a failed or missing rank ends the job with an error, not a hang.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from . import functional as IBF
from .layers import _IBBatchNorm


def dist_timeout() -> datetime.timedelta:
    return datetime.timedelta(seconds=float(os.environ.get("IBNORM_DIST_TIMEOUT", "120")))


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
    is exact); running statistics are therefore identical on every rank. Outside a process group,
    or in eval, it is :class:`ibnorm.IBBatchNorm2d` for any input rank (fast path included).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group: Any = None, device=None, dtype=None,
                 **ib_kwargs: Any) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, **ib_kwargs)
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2 or input.shape[1] != self.num_features:
            raise ValueError(f"input must have shape (N, {self.num_features}, *); got {list(input.shape)}")

    def _reduce(self) -> Optional[IBF.Reduce]:
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


@dataclass
class DistContext:
    """Where this process stands: rank, world size, device. World size 1 means no process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @classmethod
    def from_env(cls) -> "DistContext":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            dev = torch.device("cuda") if torch.cuda.is_available() and os.environ.get("IBNORM_DEVICE") == "cuda" else torch.device("cpu")
            return cls(device=dev)
        local = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() and os.environ.get("IBNORM_DEVICE", "cuda") == "cuda"
        if use_cuda:
            torch.cuda.set_device(local)
        if not tdist.is_initialized():
            try:
                tdist.init_process_group("nccl" if use_cuda else "gloo", timeout=dist_timeout())
            except Exception as e:  # a missing rank: the rendezvous timed out
                raise RuntimeError(
                    f"rank {os.environ.get('RANK')} of {world}: not every rank joined the process group within "
                    f"{dist_timeout().total_seconds():.0f} s (IBNORM_DIST_TIMEOUT); is a rank missing or did "
                    f"one fail to start? ({type(e).__name__}: {e})") from e
        return cls(tdist.get_rank(), tdist.get_world_size(), local,
                   torch.device("cuda", local) if use_cuda else torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def prepare_model(self, model: nn.Module, sync_bn: bool = True) -> nn.Module:
        if self.world_size == 1:
            return model
        if sync_bn:
            model = convert_sync_ibnorm(model)
        ids = [self.local_rank] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    @staticmethod
    def unwrap(model: nn.Module) -> nn.Module:
        return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model

    def shard(self, batch: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """This rank's contiguous slice of the global batch."""
        if self.world_size == 1:
            return batch
        per = batch[0].shape[0] // self.world_size
        return tuple(t[self.rank * per:(self.rank + 1) * per] for t in batch)

    def mean(self, value: float) -> float:
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        tdist.all_reduce(t)
        return float(t) / self.world_size

    def gather_rng(self) -> list[Tensor]:
        state = torch.get_rng_state()
        if self.world_size == 1:
            return [state]
        out: list[Any] = [None] * self.world_size
        tdist.all_gather_object(out, state)
        return out

    def barrier(self) -> None:
        if self.world_size > 1:
            tdist.barrier()
