"""The trainer's process context: rank, world size and device, under ``torchrun`` or alone.

Launch with ``torchrun`` (see the README): the trainer reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``,
joins the process group (gloo on CPU, NCCL on CUDA) and wraps the model in
``DistributedDataParallel``. ``IBNORM_DIST_TIMEOUT`` (seconds, default 120) bounds every collective
and the start-up rendezvous, so a failed or missing rank ends the job with an error, not a hang.
``IBNORM_DEVICE`` (``auto``, ``cpu``, ``cuda``) picks the device the same way alone and under torchrun:
``auto`` takes CUDA when it is available.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from .. import config
from ..distributed import convert_sync_ibnorm


def dist_timeout() -> datetime.timedelta:
    return datetime.timedelta(seconds=config.settings.dist_timeout_s)


def use_cuda(device: str = "") -> bool:
    """Whether this process trains on CUDA: ``device`` (the --device flag) or else ``IBNORM_DEVICE``; ``auto``: when
    CUDA is available."""
    want = device or config.settings.device
    if want not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device (--device) must be auto, cpu or cuda; got {want!r}")
    if want == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for (--device or IBNORM_DEVICE), but torch sees no CUDA device; use "
                         "cpu or auto")
    return want == "cuda" or (want == "auto" and torch.cuda.is_available())


@dataclass
class DistContext:
    """Where this process stands: rank, world size, device. World size 1 means no process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @classmethod
    def from_env(cls, device: str = "") -> "DistContext":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        cuda = use_cuda(device)
        if world <= 1:
            return cls(device=torch.device("cuda" if cuda else "cpu"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if cuda:
            torch.cuda.set_device(local)
        if not tdist.is_initialized():
            try:
                tdist.init_process_group("nccl" if cuda else "gloo", timeout=dist_timeout())
            except Exception as e:  # a missing rank: the rendezvous timed out
                raise RuntimeError(
                    f"rank {os.environ.get('RANK')} of {world}: not every rank joined the process group within "
                    f"{dist_timeout().total_seconds():.0f} s (IBNORM_DIST_TIMEOUT); is a rank missing or did "
                    f"one fail to start? ({type(e).__name__}: {e})") from e
        return cls(tdist.get_rank(), tdist.get_world_size(), local,
                   torch.device("cuda", local) if cuda else torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def prepare_model(self, model: nn.Module, sync_bn: bool = True, fsdp: bool = False) -> nn.Module:
        """DDP, or with ``fsdp`` FSDP2 (``fully_shard`` on every block of every ``nn.ModuleList``, then the root)."""
        if self.world_size == 1:
            return model
        if sync_bn:
            model = convert_sync_ibnorm(model)
        if fsdp:
            from torch.distributed.fsdp import fully_shard
            for module in list(model.modules()):
                if isinstance(module, nn.ModuleList):
                    for block in module:
                        fully_shard(block)
            fully_shard(model)
            return model
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

    def sum(self, values: list[float]) -> list[float]:
        """Each value summed over the ranks (float64)."""
        if self.world_size == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        tdist.all_reduce(t)
        return t.tolist()

    def gather_rng(self) -> list[Tensor]:
        state = torch.get_rng_state()
        if self.world_size == 1:
            return [state]
        out: list[Any] = [None] * self.world_size
        tdist.all_gather_object(out, state)
        return out

    def barrier(self, writing: bool = False) -> None:
        """Wait for every rank. ``writing``: behind rank 0 writing a checkpoint or the final weights, which for a large
        model outlasts IBNORM_DIST_TIMEOUT; that wait has its own group with a bound of an hour
        (``IBNORM_WRITE_TIMEOUT``, seconds), so that a slow disk is not taken for a missing rank."""
        if self.world_size == 1:
            return
        if not writing:
            tdist.barrier()
            return
        if getattr(self, "_write_group", None) is None:  # every rank reaches its first write barrier together
            self._write_group = tdist.new_group(timeout=datetime.timedelta(seconds=config.settings.write_timeout_s))
        tdist.barrier(group=self._write_group)
