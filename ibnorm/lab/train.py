"""One training run: a plain PyTorch loop (nanoGPT-style) with evaluation, checkpoints and resume.

- AdamW; weight decay only on matrices (``ndim >= 2``): norm gains, biases and scalar parameters
  (DyT's alpha, a learnable strength) are not decayed.
- Linear warmup then cosine decay to ``min_lr_ratio * lr``; gradient clipping by global norm.
- Batches are a pure function of ``(seed, step)``: vision draws epoch permutations seeded by
  ``(seed, epoch)``, language models random windows seeded by ``(seed, step)``. With the RNG state in
  the checkpoint, a killed run resumes to exactly the metrics of an uninterrupted one.
- Under ``torchrun`` (``WORLD_SIZE > 1``) the same loop runs with DistributedDataParallel: the global
  batch ``batch_size`` is split evenly across ranks (it must divide), the loss is the mean over the
  global batch, so ``lr`` means the same at any world size; rank 0 alone logs, checkpoints and writes
  results. See :mod:`ibnorm.lab.dist_context`.
- Checkpoints (``ckpt.pt``) and results (``result.json``, ``model.pt``) are written atomically.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..atomic import atomic_torch_save, atomic_write_json
from .models import build_model, get_preset
from .records import provenance
from .tasks import Task

TASK_DEFAULTS = {
    # The same hyperparameters for every norm inside a family (a fair comparison).
    "lm": dict(batch_size=16, lr=3e-3, weight_decay=0.1, warmup_steps=20, eval_batches=16, dataset="austen"),
    "vision": dict(batch_size=64, lr=2e-3, weight_decay=0.05, warmup_steps=20, eval_batches=0, dataset="fashion-mnist"),
}
# Fields that do not change what a run computes: they may differ between a checkpoint and its resume.
# init_from is a path on this machine: where the same parent weights lie may differ (reproduce records the parent).
# threads is not among them: another thread count sums in another order, so a resume with it gives other numbers.
_RUNTIME_FIELDS = {"checkpoint_every", "checkpoint_minutes", "progress", "stop_after", "init_from", "peak_tflops",
                   "workers"}


@dataclass
class TrainConfig:
    model: str = "gpt2-mini"
    norm: str = "base"
    seed: int = 0
    steps: int = 200
    batch_size: Optional[int] = None  # global batch; None = the task default
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    warmup_steps: Optional[int] = None
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    beta2: float = 0.95
    eval_every: int = 50
    eval_batches: Optional[int] = None  # LM: validation batches per evaluation
    eval_examples: int = 2000  # vision: fixed test subset size (0 = all 10k)
    eval_batch_size: Optional[int] = None  # evaluation batch (None: LMs the training batch, vision 500)
    train_subset: Optional[int] = None  # vision: fixed train subset (None = all 60k)
    holdout: int = 0  # evaluate on this many training examples (vision) or tokens (LM) carved out of the training data
    val_windows: str = "random"  # LM validation windows: "random" (seeded) or "tiled" (consecutive, each token once)
    eval_train: bool = False  # vision: also score the whole training set at the end (generalization gap)
    curve_every: int = 10  # the result keeps the mean training loss of every N steps (the training curve)
    init_from: str = ""  # start from this base-norm model.pt, then convert its norms (post-hoc conversion)
    recalibrate_bn: int = 0  # post-hoc: recompute batch-norm running statistics over this many training batches
    dataset: Optional[str] = None  # "austen" for LMs; "fashion-mnist" or "mnist" for vision
    data: str = ""  # a folder of the user's own data: train.bin/val.bin tokens (`ibnorm prepare-text`); "" = dataset
    tokenizer: str = "byte"
    context: int = 128
    width: Optional[int] = None
    depth: Optional[int] = None
    heads: Optional[int] = None  # attention heads (default: the preset's)
    image_size: Optional[int] = None  # an image folder's crops (default: the preset's, 224 at scale)
    sync_bn: bool = True  # under DDP: batch statistics over the global batch
    fsdp: bool = False  # under torchrun: shard parameters, gradients and optimizer state (FSDP2)
    info_every: int = 0  # record information-plane quantities every N steps (0 = off)
    info_probe: int = 512
    checkpoint_every: int = 25
    checkpoint_minutes: float = 0.0  # also write a checkpoint when this many minutes passed since the last (0 = off)
    stop_after: int = 0  # stop with a checkpoint after this step, to continue later (0 = run to the end)
    threads: int = 0  # torch threads (0 = leave torch's default)
    workers: Optional[int] = None  # image folders: DataLoader processes decoding ahead (None: up to 8 per rank; 0: none)
    # For GPUs and the paper's sizes; each default computes what the reproduction's runs computed, bit for bit.
    precision: str = "fp32"  # fp32, or bf16/fp16 autocast (fp16 with a gradient scaler)
    compile: bool = False  # torch.compile the model
    grad_accum: int = 1  # split each step's batch into N micro-batches: the same update, 1/N of the activations
    optimizer: str = "adamw"  # adamw, or sgd (Nesterov momentum 0.9, the ResNet recipes')
    device: str = ""  # auto, cpu or cuda ("" = IBNORM_DEVICE, default auto: CUDA when available)
    peak_tflops: float = 0.0  # the device's peak for MFU (0 = from the table of known GPUs)
    progress: bool = True

    def resolved(self) -> "TrainConfig":  # (FIELD_HELP below says what each field means)
        task = get_preset(self.model).task
        out = dataclasses.replace(self)
        for key, value in TASK_DEFAULTS[task].items():
            if getattr(out, key) is None:
                setattr(out, key, value)
        def need(ok: bool, name: str, rule: str) -> None:  # one line naming the field and its flag
            if not ok:
                raise ValueError(f"{name} (--{name.replace('_', '-')}) must be {rule}; got {getattr(out, name)!r}")
        for name in ("steps", "batch_size", "eval_every", "checkpoint_every", "curve_every", "context", "info_probe"):
            need(getattr(out, name) > 0, name, "> 0")
        for name in ("width", "depth", "heads", "train_subset", "eval_batch_size", "image_size"):
            need(getattr(out, name) is None or getattr(out, name) > 0, name, "> 0")
        need(out.eval_batches > 0 or task != "lm", "eval_batches", "> 0 for a language model")
        need(out.workers is None or out.workers >= 0, "workers", ">= 0 (0 = decode in the training process)")
        for name in ("warmup_steps", "eval_examples", "holdout", "info_every", "stop_after", "threads", "recalibrate_bn"):
            need(getattr(out, name) >= 0, name, ">= 0")
        need(math.isfinite(out.lr) and out.lr > 0, "lr", "a finite number > 0")
        need(math.isfinite(out.weight_decay) and out.weight_decay >= 0, "weight_decay", "a finite number >= 0")
        need(math.isfinite(out.grad_clip) and out.grad_clip >= 0, "grad_clip", ">= 0 (0 = off)")
        need(0 <= out.min_lr_ratio <= 1, "min_lr_ratio", "in [0, 1]")
        need(0 <= out.beta2 < 1, "beta2", "in [0, 1)")
        need(math.isfinite(out.checkpoint_minutes) and out.checkpoint_minutes >= 0, "checkpoint_minutes", ">= 0")
        need(out.precision in ("fp32", "bf16", "fp16"), "precision", "fp32, bf16 or fp16")
        need(out.optimizer in ("adamw", "sgd"), "optimizer", "adamw or sgd")
        need(out.grad_accum >= 1, "grad_accum", ">= 1")
        if out.val_windows not in ("random", "tiled"):
            raise ValueError(f"val_windows must be 'random' or 'tiled'; got {out.val_windows!r}")
        if out.curve_every <= 0:
            raise ValueError(f"curve_every must be > 0; got {out.curve_every}")
        return out

    def fingerprint(self) -> dict:
        return fingerprint_of(dataclasses.asdict(self))

    @property
    def label(self) -> str:
        """How a run is named in logs and progress bars (records carry ``model``, ``norm``, ``seed`` as fields)."""
        return f"{self.model} {self.norm} s{self.seed}"

    def run_fields(self) -> dict:
        """The fields that identify a run in every record it writes."""
        return {"model": self.model, "norm": self.norm, "seed": self.seed}


# What each TrainConfig field means: the command line's help text.
FIELD_HELP = {
    "steps": "optimizer steps", "batch_size": "global batch (split over ranks under torchrun)",
    "lr": "peak learning rate (AdamW)", "weight_decay": "AdamW weight decay, on matrices only",
    "warmup_steps": "linear warmup steps", "min_lr_ratio": "cosine decay ends at this fraction of lr",
    "grad_clip": "clip the global gradient norm (0 = off)", "beta2": "AdamW beta2",
    "eval_every": "evaluate every N steps", "eval_batches": "LM: validation batches per evaluation",
    "eval_examples": "vision: fixed test subset size (0 = all 10k)",
    "eval_batch_size": "evaluation batch, so that evaluation fits in memory at any training batch (none: LMs take the "
                       "training batch, vision 500)",
    "train_subset": "vision: fixed training subset size (default: all 60k)",
    "holdout": "evaluate on this many training images (vision) or tokens (LM) held out of training, not on the test set",
    "val_windows": "LM validation windows: random (seeded) or tiled (consecutive, every token once)",
    "eval_train": "vision: also score the whole training set at the end",
    "curve_every": "the result keeps the mean training loss of every N steps",
    "init_from": "start from this base-norm model.pt and convert its norms (post-hoc conversion)",
    "recalibrate_bn": "post-hoc: recompute batch-norm running statistics over N training batches after converting (0 = off)",
    "dataset": "austen (LMs); fashion-mnist or mnist (vision)", "tokenizer": "LMs: byte or gpt2",
    "data": "a folder of your own data: train.bin and val.bin of uint16 token ids with an optional meta.json "
            "(nanoGPT's format; `ibnorm prepare-text` writes it); it replaces --dataset",
    "context": "LMs: tokens per window", "width": "model width (default: the preset's)",
    "depth": "model depth (default: the preset's)", "heads": "attention heads (default: the preset's)",
    "image_size": "image folders: the side of the crops the model sees",
    "sync_bn": "under torchrun: batch statistics over the global batch",
    "fsdp": "under torchrun: shard the model with FSDP2 (fully_shard); checkpoints through torch.distributed.checkpoint",
    "info_every": "record information-plane quantities every N steps (0 = off)",
    "info_probe": "probe examples for the information quantities",
    "checkpoint_every": "write a checkpoint every N steps",
    "checkpoint_minutes": "also write one when this many minutes passed since the last, so that a killed long run "
                          "loses little (0 = off)", "stop_after": "stop with a checkpoint after this step (0 = run to the end)",
    "threads": "torch threads (0 = torch's default)",
    "workers": "image folders: DataLoader worker processes that decode batches ahead of the model (default: the CPUs "
               "per rank, at most 8; 0 = decode in the training process)",
    "precision": "fp32, bf16 or fp16 (autocast; fp16 with a gradient scaler)",
    "compile": "torch.compile the model", "grad_accum": "micro-batches per step: the same update, less memory",
    "optimizer": "adamw or sgd (Nesterov momentum 0.9)",
    "device": "auto, cpu or cuda (empty: IBNORM_DEVICE, whose default auto takes CUDA when available)",
    "peak_tflops": "the device's peak bf16 TFLOP/s for MFU (0: from the table of known GPUs)",
}


def field_default(name: str) -> str:
    """A field's effective default, as the help text shows it (task-dependent ones from TASK_DEFAULTS)."""
    per_task = {task: d[name] for task, d in TASK_DEFAULTS.items() if name in d}
    if per_task:
        return ", ".join(f"{task} {value}" for task, value in per_task.items())
    default = {f.name: f.default for f in dataclasses.fields(TrainConfig)}[name]
    return "none" if default is None else str(default)


def fingerprint_of(config: dict) -> dict:
    """A config (as saved in checkpoints and results) without the fields that do not change the run; a field
    added since it was saved counts with its default."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in {**defaults, **config}.items() if k not in _RUNTIME_FIELDS}


class Diverged(FloatingPointError):
    """The training loss became NaN or infinite: a result of the run (a learning rate too high), not a bug."""

    def __init__(self, message: str, step: int, curve: list):
        super().__init__(message)
        self.step, self.curve = step, curve


def _workers(cfg: TrainConfig, dist: Any) -> int:
    """DataLoader processes per rank: the CPUs this rank has (those of its node over the ranks on it), at most 8."""
    if cfg.workers is not None:
        return cfg.workers
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size))
    return min(8, max(1, (os.cpu_count() or 1) // max(1, per_node)))


def model_overrides(cfg: TrainConfig, task: "Task") -> dict:
    """The :func:`ibnorm.models.build_model` arguments this run sets."""
    overrides = {k: getattr(cfg, k) for k in ("width", "depth", "heads") if getattr(cfg, k) is not None}
    if task.vocab_size is not None:
        overrides.update(vocab_size=task.vocab_size, context=cfg.context)
    if task.classes is not None:  # the head and the input follow the image folder
        overrides.update(num_labels=len(task.classes), image_size=task.image_size)
    return overrides


def load_trained(cfg: TrainConfig, run_dir: str | Path) -> tuple[nn.Module, Task]:
    """A finished run's model and task, rebuilt from its config: ``run_dir`` is the run's folder (its ``model.pt``)
    or a weights file itself."""
    task = Task(cfg.resolved())
    model, _ = build_model(cfg.model, cfg.norm, **model_overrides(cfg, task))
    weights = Path(run_dir) / "model.pt" if Path(run_dir).is_dir() else Path(run_dir)
    model.load_state_dict(torch.load(weights, weights_only=True))
    return model, task


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only; norm gains, biases and scalars (ndim < 2) are not decayed."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def load_canonical_state(model: nn.Module, state: dict) -> None:
    """Load a single-process state dict into ``model``, which may hold synchronized batch norms with
    extra buffers (the identity op's unused step-3 statistics): only those may be missing."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.rsplit(".", 1)[-1] in ("running_mean_c", "running_var_c", "running_var_u")]
    if bad or unexpected:
        raise ValueError(f"checkpoint does not fit the model: missing {bad}, unexpected {unexpected}")


# Dense bf16 peak TFLOP/s of known GPUs (vendor data sheets; SXM parts), for MFU; --peak-tflops overrides it.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "V100": 125.0}


def peak_tflops(device: torch.device, override: float = 0.0) -> Optional[float]:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def throughput(task: "Task", cfg: TrainConfig, steps: int, seconds: float, n_params: int = 0,
               device: Optional[torch.device] = None) -> dict:
    """Training throughput of this process's part of the run (evaluation included): tokens or images per second;
    for LMs on a known GPU (or with --peak-tflops) also MFU, as 6 x parameters x tokens/s over the peak (the
    attention's own FLOPs left out, as nanoGPT's estimate does not)."""
    per_step = cfg.batch_size * (cfg.context if task.kind.name == "lm" else 1)
    key = "tokens_per_s" if task.kind.name == "lm" else "images_per_s"
    rate = per_step * steps / seconds if seconds > 0 else None
    out = {key: rate}
    peak = peak_tflops(device, cfg.peak_tflops) if device is not None else None
    if rate and peak and task.kind.name == "lm":
        out["mfu"] = 6 * n_params * rate / (peak * 1e12)
    return out


def bar_rates(rates: dict) -> dict:
    """The progress bar's short form of :func:`throughput` (evaluation time included, as there)."""
    out = {}
    for key, unit in (("tokens_per_s", "tok/s"), ("images_per_s", "img/s")):
        if rates.get(key):
            out[unit] = f"{rates[key]:,.0f}"
    if rates.get("mfu") is not None:
        out["mfu"] = f"{100 * rates['mfu']:.1f}%"
    return out


def _accumulate(task: "Task", model: nn.Module, x: torch.Tensor, y: torch.Tensor, micro: int,
                autocast: Optional[torch.dtype], scaler, device_type: str) -> torch.Tensor:
    """One step's gradients over ``micro`` equal micro-batches of (x, y), each loss scaled by 1/micro so that the
    sum is the whole batch's mean (batch norms see micro-batch statistics, as in any accumulation); returns the
    whole batch's mean loss."""
    total = torch.zeros((), device=x.device)
    for xi, yi in zip(x.chunk(micro), y.chunk(micro)):
        with torch.autocast(device_type, dtype=autocast, enabled=autocast is not None):
            loss, _ = task.loss(model, xi, yi)
        part = loss.float() / micro
        (scaler.scale(part) if scaler is not None else part).backward()
        total = total + part.detach()
    return total


@torch.no_grad()
def recalibrate_batch_norms(model: nn.Module, task: "Task", batches: int) -> None:
    """Recompute every batch norm's running statistics as the plain average over the first ``batches`` training
    batches, in training mode: a converted model's normalized inputs differ from the ones its statistics saw."""
    norms = [m for m in model.modules() if hasattr(m, "reset_running_stats") and hasattr(m, "momentum")]
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    for step in range(batches):
        x, y = task.batch(step)
        task.loss(model, x, y)
    model.train(was_training)
    for m, momentum in saved:
        m.momentum = momentum


def learned_strengths(model: nn.Module, state: dict) -> dict[str, float]:
    """The strength each IBNorm layer with a learnable strength ended at, by layer name (empty when none), from a
    full (unsharded) state dict: under FSDP the module's own parameter is a shard."""
    from ..layers import _IBMixin
    from ..ops import raw_to_strength
    return {name: float(raw_to_strength(m.compression, state[f"{name}.strength_raw"].detach()).reshape(()))
            for name, m in model.named_modules()
            if isinstance(m, _IBMixin) and m.learnable_strength and f"{name}.strength_raw" in state}


def _config_difference(saved: dict, cfg: TrainConfig) -> str:
    """The fields in which a saved config differs from ``cfg``, as 'field: saved -> now'."""
    saved, now = fingerprint_of(saved), cfg.fingerprint()
    return ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(saved) | set(now))
                     if saved.get(k) != now.get(k))


def _check_resumable(ckpt: dict, cfg: TrainConfig, path: Path) -> None:
    diff = _config_difference(ckpt["config"], cfg)
    if diff:
        raise ValueError(f"{path} holds a checkpoint of a different configuration ({diff}); "
                         f"use another output directory or delete it")


def _load_checkpoint(path: Path, device: torch.device) -> dict:
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # truncated or foreign file: say which and what to do, not a pickle traceback
        raise ValueError(f"{path} cannot be read as a checkpoint ({type(e).__name__}: {str(e)[:200]}); "
                         f"delete it to train this run from the start") from None


def train(cfg: TrainConfig, out_dir: str | Path) -> dict:
    """Train (or resume, or return the finished result of) one run in ``out_dir``."""
    from .dist_context import DistContext

    cfg = cfg.resolved()
    out_dir = Path(out_dir)
    result_path, ckpt_path = out_dir / "result.json", out_dir / "ckpt.pt"
    if result_path.exists():
        try:
            result = json.loads(result_path.read_text())
            result["config"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{result_path} is not a readable result ({type(e).__name__}: {str(e)[:120]}); delete it "
                             "to train this run again") from None
        diff = _config_difference(result["config"], cfg)
        if not diff:
            return result
        raise ValueError(f"{result_path} is a finished run of a different configuration ({diff}); "
                         f"use another output directory")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # A wrong norm spec is reported before any data loads (built before seeding, so nothing else changes).
    build_model(cfg.model, cfg.norm, device="meta",
                **{k: getattr(cfg, k) for k in ("width", "depth", "heads") if getattr(cfg, k) is not None})

    dist = DistContext.from_env(cfg.device)
    if cfg.batch_size % dist.world_size:
        raise ValueError(f"batch_size (global) must be divisible by the world size {dist.world_size}; got {cfg.batch_size}")
    torch.manual_seed(cfg.seed)
    task = Task(cfg)
    if cfg.init_from:  # the base model's trained weights first, then the norms converted as cfg.norm says
        from .models import apply_norm
        model, _ = build_model(cfg.model, "base", **model_overrides(cfg, task))
        model.load_state_dict(torch.load(cfg.init_from, map_location="cpu", weights_only=True))
        report = apply_norm(model, get_preset(cfg.model), cfg.norm)
        if cfg.recalibrate_bn:
            recalibrate_batch_norms(model, task, cfg.recalibrate_bn)
    else:
        model, report = build_model(cfg.model, cfg.norm, **model_overrides(cfg, task))
    if report.total and dist.device.type == "cpu":  # a CUDA rank never runs the C++ CPU kernel: no build there
        from ..kernels import cpu
        cpu.load()  # a first-use build of the C++ kernel must not count as training time
    # Checkpoints hold the single-process layout, so a run resumes under any world size.
    own_keys = set(model.state_dict())
    model.to(dist.device)
    if cfg.fsdp and cfg.info_every:
        raise ValueError("info_every must be 0 with fsdp: the recorder runs the model on rank 0 alone")
    model = dist.prepare_model(model, sync_bn=cfg.sync_bn, fsdp=cfg.fsdp)
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=0.9, nesterov=True)
    else:
        opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, cfg.beta2),
                                fused=False, foreach=True)
    if (cfg.batch_size // dist.world_size) % cfg.grad_accum:
        raise ValueError(f"grad_accum (--grad-accum) must divide the per-process batch {cfg.batch_size // dist.world_size}; "
                         f"got {cfg.grad_accum}")
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    scaler = torch.amp.GradScaler(dist.device.type) if cfg.precision == "fp16" else None
    forward_model = torch.compile(model) if cfg.compile else model

    recorder, info_rows = None, []
    if cfg.info_every and dist.is_main:
        from .info.recorder import InfoRecorder
        px, py = task.probe(cfg.info_probe)
        recorder = InfoRecorder(dist.unwrap(model), px, py, task.kind.name, vocab_size=task.vocab_size)

    # Post-hoc: what the converted model scores before any fine-tuning (the drop at conversion). Evaluation draws
    # no random numbers, so the run trains exactly as without it.
    workers = _workers(cfg, dist)  # image folders: decoding processes for training and evaluation batches
    at_start = (task.evaluate(dist.unwrap(model), dist.device, workers=workers)
                if cfg.init_from and not ckpt_path.exists() else None)
    start, history, elapsed, acc, resumed_from = 0, [], 0.0, [0.0, 0], []
    cpu_elapsed = 0.0  # this process's CPU time in training: unlike wall time, not inflated by other work here
    curve, bucket = [], [0.0, 0]  # [step, mean training loss of the last curve_every steps]
    if ckpt_path.exists():
        ckpt = _load_checkpoint(ckpt_path, dist.device)
        _check_resumable(ckpt, cfg, ckpt_path)
        if cfg.fsdp:
            _load_sharded(model, opt, out_dir / "ckpt.dcp")
        else:
            load_canonical_state(dist.unwrap(model), ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
        saved_threads = ckpt.get("torch_threads")
        if saved_threads is not None and saved_threads != torch.get_num_threads():
            raise ValueError(f"{ckpt_path} was trained with {saved_threads} torch threads, this process has "
                             f"{torch.get_num_threads()}: another thread count gives other numbers; resume with "
                             f"--threads {saved_threads}")
        start, history, elapsed, acc = ckpt["step"], ckpt["history"], ckpt["elapsed"], ckpt["train_acc"]
        cpu_elapsed = ckpt.get("cpu_elapsed")  # None: a checkpoint from before CPU time was kept
        torch.set_rng_state(ckpt["rng"][dist.rank] if dist.rank < len(ckpt["rng"]) else ckpt["rng"][0])
        info_rows = ckpt.get("info", [])
        resumed_from = ckpt.get("resumed_from", []) + [start]  # the steps this run continued from, in order
        curve, bucket = ckpt.get("curve", []), ckpt.get("curve_bucket", [0.0, 0])
        at_start = ckpt.get("at_start")
    elif recorder is not None:
        info_rows += recorder.record(0)

    bar = None
    if cfg.progress and dist.is_main:
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, initial=start, desc=cfg.label, leave=False,
                   dynamic_ncols=True, file=sys.stderr)
    session_wall, session_cpu = time.time(), time.process_time()  # this process's own part of the run
    last_checkpoint = session_wall
    t0 = time.time() - elapsed
    c0 = None if cpu_elapsed is None else time.process_time() - cpu_elapsed
    cpu_time = lambda: None if c0 is None else time.process_time() - c0  # noqa: E731
    bar_params = sum(p.numel() for p in model.parameters()) if bar is not None else 0
    model.train()
    batches = task.batches(start, cfg.steps, (dist.rank, dist.world_size), workers,
                           pin_memory=dist.device.type == "cuda")
    for step in range(start, cfg.steps):
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = next(batches)
        opt.zero_grad(set_to_none=True)
        if cfg.grad_accum == 1 and autocast is None and not cfg.compile:  # the reproduction's path, unchanged
            loss, _ = task.loss(model, x.to(dist.device), y.to(dist.device))
            loss.backward()
        else:
            loss = _accumulate(task, forward_model, x.to(dist.device), y.to(dist.device), cfg.grad_accum, autocast,
                               scaler, dist.device.type)
        if scaler is not None:
            scaler.unscale_(opt)
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        loss_value = dist.mean(loss.item())
        if not math.isfinite(loss_value):
            raise Diverged(f"loss became {loss_value} at step {step} ({cfg.model}, {cfg.norm}, seed {cfg.seed})",
                           step, curve)
        acc = [acc[0] + loss_value, acc[1] + 1]
        bucket = [bucket[0] + loss_value, bucket[1] + 1]
        done = step + 1
        if done % cfg.curve_every == 0 or done == cfg.steps:
            curve.append([done, bucket[0] / bucket[1]])
            bucket = [0.0, 0]
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", **bar_rates(
                throughput(task, cfg, done - start, time.time() - session_wall, bar_params, dist.device)))
        if done % cfg.eval_every == 0 or done == cfg.steps:
            metrics = task.evaluate(dist.unwrap(model), dist.device, None if cfg.fsdp else dist, workers)
            history.append({"step": done, "train_loss": acc[0] / acc[1], "lr": lr,
                            "elapsed": time.time() - t0, **metrics})
            acc = [0.0, 0]
        if recorder is not None and (done % cfg.info_every == 0 or done == cfg.steps):
            info_rows += recorder.record(done)
        # every checkpoint_every steps, or when checkpoint_minutes passed (looked at every 10 steps; the ranks agree)
        due = (cfg.checkpoint_minutes > 0 and done % 10 == 0 and done < cfg.steps
               and dist.mean(float(time.time() - last_checkpoint >= 60 * cfg.checkpoint_minutes)) > 0)
        if (done % cfg.checkpoint_every == 0 or due) and done < cfg.steps:
            last_checkpoint = time.time()
            rng = dist.gather_rng()
            if cfg.fsdp:  # every rank writes its shards; ckpt.pt then holds the rest
                _save_sharded(model, opt, out_dir / "ckpt.dcp", dist)
            if dist.is_main:
                state = {} if cfg.fsdp else {
                    "model": {k: v for k, v in dist.unwrap(model).state_dict().items() if k in own_keys},
                    "optimizer": opt.state_dict()}
                atomic_torch_save({**state, "step": done, "history": history, "elapsed": time.time() - t0,
                                   "cpu_elapsed": cpu_time(), "train_acc": acc, "rng": rng, "info": info_rows, "resumed_from": resumed_from,
                                   "curve": curve, "curve_bucket": bucket, "at_start": at_start,
                                   "torch_threads": torch.get_num_threads(),
                                   "config": dataclasses.asdict(cfg)}, ckpt_path)
            dist.barrier(writing=True)
            if cfg.stop_after and done >= cfg.stop_after:
                if bar is not None:
                    bar.close()
                return {"stopped_at": done, "checkpoint": str(ckpt_path)}
    if bar is not None:
        bar.close()
    if cfg.eval_train:
        history[-1].update(task.evaluate_train(dist.unwrap(model), dist.device, workers))
    final_state = _full_state(model) if cfg.fsdp else dist.unwrap(model).state_dict()
    result = {"config": dataclasses.asdict(cfg), "final": history[-1], "history": history, "curve": curve,
              "learned_strength": learned_strengths(dist.unwrap(model), final_state),
              "wall_time_s": time.time() - t0, "cpu_time_s": cpu_time(),
              "session_wall_s": time.time() - session_wall, "session_cpu_s": time.process_time() - session_cpu,
              **throughput(task, cfg, cfg.steps - start, time.time() - session_wall,
                           sum(p.numel() for p in model.parameters()), dist.device),
              "n_params": sum(p.numel() for p in model.parameters()),
              "norms": {"replaced": dict(report.replaced), "into": sorted({d for _, _, d in report.paths})},
              "world_size": dist.world_size, "resumed_from": resumed_from, "environment": provenance(),
              **({"classes": task.classes} if task.classes is not None else {})}
    if at_start is not None:
        result["at_start"] = at_start
    if dist.is_main:
        atomic_torch_save({k: v for k, v in final_state.items() if k in own_keys}, out_dir / "model.pt")
        if recorder is not None:
            from .info.recorder import write_info_csv
            write_info_csv(out_dir / "info.csv", [dict(r, **cfg.run_fields()) for r in info_rows])
        atomic_write_json(result_path, result)
        if ckpt_path.exists():
            ckpt_path.unlink()
        shutil.rmtree(out_dir / "ckpt.dcp", ignore_errors=True)
    dist.barrier(writing=True)
    return result


# ---- sharded checkpoints (FSDP2): torch.distributed.checkpoint reshards, so any world size resumes -----------

def _save_sharded(model: nn.Module, opt: torch.optim.Optimizer, path: Path, dist) -> None:
    """Model and optimizer state, each rank writing its shards into a fresh folder that then replaces ``path``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    model_sd, optim_sd = get_state_dict(model, opt)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    dist.barrier()
    if dist.is_main:  # the old checkpoint goes only once the new one is whole
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def _load_sharded(model: nn.Module, opt: torch.optim.Optimizer, path: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    model_sd, optim_sd = get_state_dict(model, opt)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])


def _full_state(model: nn.Module) -> dict:
    """The whole model's state on rank 0 (a collective: every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
