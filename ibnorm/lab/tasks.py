"""The two kinds of task, language modelling and image classification: everything that differs between them
lives here (input key, loss, metrics, probe set, synthetic batches), so no other module asks which kind it has.

:class:`Task` is one run's data: ``batch(step)`` is a pure function of ``(seed, step)``, the validation
set is fixed, and ``evaluate`` returns the kind's metrics.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from . import data as D
from .models import get_preset


@dataclass(frozen=True)
class TaskKind:
    """What a kind of task feeds a model, how it scores it, and which metric its tables lead with."""

    name: str
    input_key: str  # the Hugging Face model's input argument
    metric: str  # the headline validation metric
    higher_is_better: bool
    secondary: str  # the metric shown beside it

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(mean cross-entropy, logits)."""
        logits = model(**{self.input_key: x}).logits
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)), logits

    def probe_features(self, t: Tensor, is_penultimate: bool) -> Tensor:
        """The part of a captured representation that predicts a probe label (an LM predicts the next token
        from the last position)."""
        return t[:, -1] if self.name == "lm" and is_penultimate else t

    def probe_inputs(self, x: Tensor, vocab_size: int | None) -> Tensor:
        """``X`` as the information estimators see it: the image, or the window of tokens one-hot."""
        if self.name == "lm":
            return nn.functional.one_hot(x, vocab_size or int(x.max()) + 1).double()
        return x

    @staticmethod
    def probe_labels(y: Tensor) -> Tensor:
        """``Y`` per probe example: the class, or the token after the window's last position."""
        return y.reshape(len(y), -1)[:, -1].long()

    def synthetic_batch(self, batch_size: int, vocab_size: int = 256, context: int = 128, channels: int = 1,
                        image_size: int = 28) -> dict:
        """Random inputs and labels of this kind, for timing a training step (defaults: the mini presets')."""
        if self.name == "lm":
            x = torch.randint(0, vocab_size, (batch_size, context))
            return {"input_ids": x, "labels": x}
        return {"pixel_values": torch.randn(batch_size, channels, image_size, image_size),
                "labels": torch.randint(0, 10, (batch_size,))}


TASK_KINDS: dict[str, TaskKind] = {
    "lm": TaskKind("lm", "input_ids", "val_loss", False, "val_ppl"),
    "vision": TaskKind("vision", "pixel_values", "val_acc", True, "val_loss"),
}


def task_kind(model: str) -> TaskKind:
    """The kind of task a preset model is trained on."""
    return TASK_KINDS[get_preset(model).task]


class Task:
    """Data and loss for one run; ``batch(step)`` returns the *global* batch of that step."""

    def __init__(self, cfg: Any):
        """``cfg``: a resolved :class:`ibnorm.lab.train.TrainConfig` (model, dataset, batch and eval sizes, seed)."""
        self.cfg = cfg
        self.kind = task_kind(cfg.model)
        if self.kind.name == "lm":
            if getattr(cfg, "data", ""):
                from .data.hf import is_saved_dataset
                from .data.tokens import token_folder
                if is_saved_dataset(cfg.data):
                    raise ValueError(f"data: {cfg.data} is a saved Hugging Face dataset; a language model trains on "
                                     f"tokens: ibnorm prepare-text {cfg.data} --out TOKENS, then --data TOKENS")
                self.text = token_folder(cfg.data, min_tokens=cfg.context + 2)
            elif cfg.dataset != "austen":
                raise ValueError(f"dataset must be 'austen' for language models; got {cfg.dataset!r}")
            else:
                self.text = D.austen_data(cfg.tokenizer)
            if cfg.holdout:
                self.text = D.carve_holdout(self.text, cfg.holdout)
            self.vocab_size = self.text.vocab_size
            if cfg.val_windows == "tiled":
                self.val = D.tiled_batches(self.text.val, cfg.batch_size, cfg.context, cfg.eval_batches)
            else:
                g = torch.Generator().manual_seed(12345)  # the same validation windows for every run
                self.val = [D.lm_batch(self.text.val, cfg.batch_size, cfg.context, g) for _ in range(cfg.eval_batches)]
            size = getattr(cfg, "eval_batch_size", None)
            if size:  # the same windows, in batches of eval_batch_size (memory), scored token-weighted
                xs, ys = torch.cat([x for x, _ in self.val]), torch.cat([y for _, y in self.val])
                self.val = list(zip(xs.split(size), ys.split(size)))
        elif getattr(cfg, "data", ""):
            from .data.images import ImageFolderData
            if not get_preset(cfg.model).scale:
                raise ValueError(f"data: image folders train the scale presets (vit-s16, resnet18, resnet50), whose "
                                 f"inputs are RGB; {cfg.model} takes Fashion-MNIST's 28x28 grey images")
            from .data.hf import HFImageData, is_saved_dataset
            saved = is_saved_dataset(cfg.data)
            self.vision = (HFImageData if saved else ImageFolderData)(cfg.data, self.image_size)
            self.vocab_size = None
        else:
            self.vision = D.vision_data(cfg.dataset, cfg.train_subset, cfg.eval_examples or None, cfg.holdout)
            self.vocab_size = None

    def batch(self, step: int, shard: tuple[int, int] = (0, 1)) -> tuple[Tensor, Tensor]:
        """Step ``step``'s global batch, or with ``shard=(rank, world_size)`` that rank's contiguous slice of it (as
        ``DistContext.shard`` cuts it). An image folder decodes only the slice."""
        rank, world = shard
        if world > 1 and hasattr(getattr(self, "vision", None), "classes"):
            return self._folder_batch(step, rank, world)
        x, y = self._global_batch(step)
        if world > 1:
            per = x.shape[0] // world
            return x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per]
        return x, y

    def batches(self, start: int, stop: int, shard: tuple[int, int] = (0, 1), workers: int = 0,
                pin_memory: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        """``batch(step, shard)`` for step in [start, stop). With ``workers`` > 0 (image folders), a torch DataLoader's
        worker processes decode them, ``workers`` batches ahead of the step, in step order: the same tensors."""
        if workers <= 0 or not hasattr(getattr(self, "vision", None), "classes"):
            return (self.batch(step, shard) for step in range(start, stop))
        from torch.utils.data import DataLoader
        loader = DataLoader(_StepBatches(self, shard), batch_size=None, sampler=range(start, stop),
                            num_workers=workers, pin_memory=pin_memory, prefetch_factor=2)
        return (_raise_bad_data(item) for item in loader)

    def _folder_batch(self, step: int, rank: int, world: int) -> tuple[Tensor, Tensor]:
        idx = self._indices(step)
        per = len(idx) // world
        mine = idx[rank * per:(rank + 1) * per]
        return self.vision.train_x.augmented(mine, self.cfg.seed * 1_000_003 + step, rank * per), \
            self.vision.train_y[mine]

    def _indices(self, step: int) -> Tensor:
        cfg = self.cfg
        n = len(self.vision.train_y)
        per_epoch = max(1, n // cfg.batch_size)
        epoch, i = divmod(step, per_epoch)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
        return perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]

    def _global_batch(self, step: int) -> tuple[Tensor, Tensor]:
        cfg = self.cfg
        if self.kind.name == "lm":
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            return D.lm_batch(self.text.train, cfg.batch_size, cfg.context, g)
        idx = self._indices(step)
        if hasattr(self.vision.train_x, "augmented"):  # an image folder: decoded and augmented per (seed, step)
            return self.vision.train_x.augmented(idx, cfg.seed * 1_000_003 + step), self.vision.train_y[idx]
        return self.vision.train_x[idx], self.vision.train_y[idx]

    @property
    def image_size(self) -> int:
        return getattr(self.cfg, "image_size", None) or get_preset(self.cfg.model).defaults.get("image_size", 224)

    @property
    def classes(self) -> Optional[list]:
        """The class names of an image folder (None for the built-in datasets and LMs)."""
        return getattr(getattr(self, "vision", None), "classes", None)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return self.kind.loss(model, x, y)

    def probe(self, n: int) -> tuple[Tensor, Tensor]:
        """The first ``n`` held-out examples: the same probe set for every run of a task."""
        if self.kind.name == "lm":
            return torch.cat([x for x, _ in self.val])[:n], torch.cat([y for _, y in self.val])[:n]
        return self.vision.test_x[:n], self.vision.test_y[:n]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, device: torch.device, dist: Any = None, workers: int = 0) -> dict:
        """The kind's metrics on the evaluation set. ``dist`` (a DistContext of several ranks): each rank scores
        every world_size-th batch and the sums are all-reduced, which gives one process's metrics (up to the order of
        the sums) in 1/world_size of the time and memory. ``workers`` > 0 (image folders): DataLoader worker
        processes decode the evaluation batches ahead of the model, as in training; the metrics are the same."""
        was_training = model.training
        model.eval()
        sharded = dist is not None and dist.world_size > 1
        size = getattr(self.cfg, "eval_batch_size", None)
        if self.kind.name == "lm":
            if not sharded and not size:  # the reproduction's computation, unchanged: the mean of batch means
                losses = [float(self.loss(model, x.to(device), y.to(device))[0]) for x, y in self.val]
                loss = sum(losses) / len(losses)
            else:
                mine = self.val[dist.rank::dist.world_size] if sharded else self.val
                total = sum(float(self.loss(model, x.to(device), y.to(device))[0]) * y.numel() for x, y in mine)
                count = sum(y.numel() for _, y in mine)
                total, count = dist.sum([total, count]) if sharded else (total, count)
                loss = total / count
            out = {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_bpc": loss / math.log(2)}
        else:
            loss, acc = self._classify(model, self.vision.test_x, self.vision.test_y, device, dist if sharded else None,
                                       size or 500, workers)
            out = {"val_loss": loss, "val_acc": acc}
        model.train(was_training)
        return out

    @torch.no_grad()
    def evaluate_train(self, model: nn.Module, device: torch.device, workers: int = 0) -> dict:
        """Vision: loss and accuracy on the whole training set (eval mode), for the generalization gap."""
        if self.kind.name != "vision":
            return {}
        was_training = model.training
        model.eval()
        loss, acc = self._classify(model, self.vision.train_x, self.vision.train_y, device, workers=workers)
        model.train(was_training)
        return {"train_eval_loss": loss, "train_acc": acc}

    def _classify(self, model: nn.Module, xs: Tensor, ys: Tensor, device: torch.device, dist: Any = None,
                  chunk: int = 500, workers: int = 0) -> tuple[float, float]:
        total, correct = 0.0, 0
        starts = range(0, len(ys), chunk)
        if dist is not None:
            starts = starts[dist.rank::dist.world_size]
        if workers > 0 and hasattr(xs, "augmented"):  # lazy images: decoded by worker processes, in order
            from torch.utils.data import DataLoader
            loader = DataLoader(_Chunks(xs, chunk), batch_size=None, sampler=starts, num_workers=workers,
                                prefetch_factor=2, pin_memory=torch.device(device).type == "cuda")
            inputs = (_raise_bad_data(item) for item in loader)
        else:
            inputs = (xs[i:i + chunk] for i in starts)
        for i, x in zip(starts, inputs):
            x, y = x.to(device), ys[i:i + chunk].to(device)
            loss, logits = self.loss(model, x, y)
            total += float(loss) * len(y)
            correct += int((logits.argmax(-1) == y).sum())
        if dist is not None:
            total, correct = dist.sum([total, correct])
        return total / len(ys), correct / len(ys)


class _StepBatches(Dataset):
    """A map from step to that step's (sharded) batch, for a DataLoader whose sampler yields the steps."""

    def __init__(self, task: Task, shard: tuple[int, int]):
        self.task, self.shard = task, shard

    def __getitem__(self, step: int) -> Any:
        try:
            return self.task.batch(step, self.shard)
        except ValueError as e:  # bad data: carried to the training process as its one line, not a worker traceback
            return {"bad_data": str(e)}


class _Chunks(Dataset):
    """A map from a start index to lazy images [start, start + chunk), decoded: evaluation's batches."""

    def __init__(self, images: Any, chunk: int):
        self.images, self.chunk = images, chunk

    def __getitem__(self, start: int) -> Any:
        try:
            return self.images[start:start + self.chunk]
        except ValueError as e:  # as _StepBatches: bad data crosses to the main process as its one line
            return {"bad_data": str(e)}


def _raise_bad_data(item: Any) -> Any:
    if isinstance(item, dict):
        raise ValueError(item["bad_data"])
    return item
