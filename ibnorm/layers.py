"""``nn.Module`` norms with PyTorch's signatures: they own parameters, buffers and settings, and each
``forward`` is one call of :mod:`ibnorm.functional`.

Every layer takes its base norm's constructor arguments, then the keyword-only IBNorm ones:
``compression`` (``power``/``log``/``tanh``/``none``), ``strength`` (lambda; ``None`` = the op's
default), ``learnable_strength`` (train lambda, reparameterized to stay in the op's range; beyond the
paper), ``order`` (``compress_then_standardize``, the definition, or ``standardize_then_compress``) and
``impl`` (what runs, resolved once here: ``None`` takes ``IBNORM_IMPL`` from :mod:`ibnorm.config`, default
``auto``; see :mod:`ibnorm.functional` for the values).
"""
from __future__ import annotations

import json
import numbers
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from . import functional as IBF
from . import reference as R
from .config import resolve_impl
from .ops import (COMPRESS_THEN_STANDARDIZE, check_order, get_compression, raw_to_strength, resolve_strength,
                  strength_to_raw)

_shape_t = Union[int, Sequence[int], torch.Size]


def _to_shape(normalized_shape: _shape_t) -> tuple[int, ...]:
    if isinstance(normalized_shape, numbers.Integral):
        normalized_shape = (int(normalized_shape),)
    shape = tuple(int(s) for s in normalized_shape)
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"normalized_shape must be a positive int or a non-empty sequence of positive ints; got {normalized_shape!r}")
    return shape


def _check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive int; got {value!r}")
    return int(value)


def _check_eps(eps: Optional[float], allow_none: bool = False) -> Optional[float]:
    if eps is None and allow_none:
        return None
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 <= eps < float("inf"):
        raise ValueError(f"eps must be a finite float >= 0; got {eps!r}")
    return float(eps)


def reset_affine(module: nn.Module) -> None:
    """The base norms' affine initialization: weight 1 and bias 0, each where the module has it."""
    for name, init in (("weight", nn.init.ones_), ("bias", nn.init.zeros_)):
        param = getattr(module, name, None)
        if param is not None:
            init(param)


class SettingsInState:
    """Keeps a layer's settings in its state dict, so that they travel with the weights.

    ``layer_settings()`` (name -> number, string or bool) is saved as the buffer ``norm_settings``, JSON text as uint8,
    which dtype casts leave alone and safetensors can store. Loading a state saved with other settings fails and
    names each difference; a state saved before settings were recorded loads as it did.
    """

    def layer_settings(self) -> dict:
        raise NotImplementedError

    def _register_settings(self) -> None:
        text = json.dumps(self.layer_settings(), sort_keys=True).encode()
        self.register_buffer("norm_settings", torch.tensor(list(text), dtype=torch.uint8), persistent=True)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        key = prefix + "norm_settings"
        saved = state_dict.get(key)
        if saved is not None:
            theirs, mine = json.loads(bytes(saved.tolist()).decode()), self.layer_settings()
            diff = [f"{k}: saved {theirs.get(k)!r}, this layer {mine.get(k)!r}" for k in sorted(set(theirs) | set(mine))
                    if theirs.get(k) != mine.get(k)]
            if diff:
                error_msgs.append(f"{type(self).__name__} '{prefix[:-1]}' was saved with other settings ("
                                  + "; ".join(diff) + "): build it with the saved settings (ibnorm.from_pretrained "
                                  "does for converted Hugging Face models)")
                return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if saved is None and key in missing_keys:  # a state from before settings were saved
            missing_keys.remove(key)


class _IBMixin(SettingsInState):
    """Holds the compression op, its strength (fixed or learnable) and the order."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        raw = state_dict.get(prefix + "strength_raw")
        if raw is not None and raw.dim() == 0:  # saved when strength_raw was 0-dimensional
            state_dict[prefix + "strength_raw"] = raw.reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def layer_settings(self) -> dict:
        return {"compression": self.compression, "strength": self.init_strength, "order": self.order,
                "learnable_strength": self.learnable_strength}

    def __prepare_scriptable__(self):
        # torch.jit.script calls this first: one line that says what works, not a TorchScript type error.
        raise RuntimeError(f"{type(self).__name__} does not support torch.jit.script (TorchScript is deprecated in "
                           "PyTorch); use torch.compile, or torch.export for a deployable graph: both support it")

    compression: str
    order: str

    def _init_ib(self, compression: str, strength: Optional[float], learnable_strength: bool, order: str,
                 factory: dict, impl: Optional[str]) -> None:
        self.impl = resolve_impl(impl)
        self.compression = get_compression(compression).name
        self.order = check_order(order)
        self.init_strength = resolve_strength(self.compression, strength)
        self.learnable_strength = bool(learnable_strength)
        self._register_settings()
        if self.learnable_strength:
            if self.init_strength is None:
                raise ValueError("learnable_strength=True needs compression 'power', 'log' or 'tanh'; got 'none'")
            dtype = torch.float64 if factory.get("dtype") == torch.float64 else torch.float32
            # shape (1,), not (): FSDP2's fully_shard cannot shard a 0-dimensional parameter
            self.strength_raw = nn.Parameter(torch.empty(1, device=factory.get("device"), dtype=dtype))
        else:
            self.register_parameter("strength_raw", None)

    def _register_affine(self, shape: Sequence[int], weight: bool, bias: bool, factory: dict) -> None:
        """``weight`` and ``bias`` of ``shape`` as the base norm has them (None where it has none)."""
        for name, present in (("weight", weight), ("bias", bias)):
            self.register_parameter(name, nn.Parameter(torch.empty(tuple(shape), **factory)) if present else None)

    def reset_parameters(self) -> None:
        reset_affine(self)
        self._reset_strength()

    def _reset_strength(self) -> None:
        if self.strength_raw is not None:
            with torch.no_grad():
                self.strength_raw.fill_(strength_to_raw(self.compression, self.init_strength))

    @property
    def strength(self) -> Union[float, Tensor, None]:
        """The lambda in use: a float, or a 0-d tensor (with grad) when learnable."""
        if self.strength_raw is not None:
            return raw_to_strength(self.compression, self.strength_raw).reshape(())
        return self.init_strength

    def _groups(self, input: Tensor) -> tuple[Tensor, tuple[int, ...], bool]:
        """(input viewed so that groups reduce over ``dims``, dims, centered)."""
        raise NotImplementedError

    @torch.no_grad()
    def contraction_ratio(self, input: Tensor) -> float:
        """The diagnostic ``var(s(u)) / var(u)`` (RMS: mean squares) of this input, averaged over groups.

        Batch grouping uses the statistics of ``input`` itself (as in training).
        """
        x, dims, centered = self._groups(input.to(R.compute_dtype(input.dtype)))
        eps = self.eps if self.eps is not None else R.default_eps(input.dtype)
        u = R.base_normalize(x, dims, centered, eps)
        return float(R.contraction_ratio(u, self.compression, self.strength, dims, centered))

    def _ib_repr(self) -> str:
        s = f"compression={self.compression}"
        if self.init_strength is not None:
            if self.strength_raw is not None:
                s += f", strength={float(self.strength.detach()):.4g} (learnable)"
            else:
                s += f", strength={self.init_strength:g}"
        if self.order != COMPRESS_THEN_STANDARDIZE:
            s += f", order={self.order}"
        return s


class IBLayerNorm(_IBMixin, nn.Module):
    """IBNorm with ``nn.LayerNorm``'s grouping, signature and affine parameters."""

    def __init__(self, normalized_shape: _shape_t, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, device=None, dtype=None, *, compression: str = "power",
                 strength: Optional[float] = None, learnable_strength: bool = False,
                 order: str = COMPRESS_THEN_STANDARDIZE, impl: Optional[str] = None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.normalized_shape = _to_shape(normalized_shape)
        self.eps = _check_eps(eps)
        self.elementwise_affine = elementwise_affine
        self._register_affine(self.normalized_shape, elementwise_affine, elementwise_affine and bias, factory)
        self._init_ib(compression, strength, learnable_strength, order, factory, impl)
        self.reset_parameters()

    def forward(self, input: Tensor) -> Tensor:
        return IBF.ib_layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps,
                                 self.compression, self.strength, self.order, self.impl)

    def _groups(self, input: Tensor) -> tuple[Tensor, tuple[int, ...], bool]:
        return input, tuple(range(input.dim() - len(self.normalized_shape), input.dim())), True

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
                + self._ib_repr())


class IBRMSNorm(_IBMixin, nn.Module):
    """IBNorm with ``nn.RMSNorm``'s grouping (no centering); ``eps=None`` means what ``nn.RMSNorm`` takes: the machine
    epsilon of the dtype it computes in (float32 for bfloat16/float16 inputs).

    ``unit_offset=True`` stores the gain as an offset from 1 (the output is scaled by ``1 + weight``, and ``weight``
    starts at 0), as Gemma's RMSNorm does: a converted Gemma keeps its parameterization, and with it what weight
    decay pulls the gain toward.
    """

    def __init__(self, normalized_shape: _shape_t, eps: Optional[float] = None, elementwise_affine: bool = True,
                 device=None, dtype=None, *, compression: str = "power", strength: Optional[float] = None,
                 learnable_strength: bool = False, order: str = COMPRESS_THEN_STANDARDIZE,
                 impl: Optional[str] = None, unit_offset: bool = False) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.normalized_shape = _to_shape(normalized_shape)
        self.eps = _check_eps(eps, allow_none=True)
        self.elementwise_affine = elementwise_affine
        if not isinstance(unit_offset, bool):
            raise TypeError(f"unit_offset must be a bool; got {type(unit_offset).__name__}")
        if unit_offset and not elementwise_affine:
            raise ValueError("unit_offset=True needs elementwise_affine=True (it is a form of the gain)")
        self.unit_offset = unit_offset
        self._register_affine(self.normalized_shape, elementwise_affine, False, factory)
        self._init_ib(compression, strength, learnable_strength, order, factory, impl)
        self.reset_parameters()

    def layer_settings(self) -> dict:
        # recorded only when set, so that a state saved before the option existed still loads
        return {**super().layer_settings(), **({"unit_offset": True} if self.unit_offset else {})}

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.unit_offset:
            with torch.no_grad():
                self.weight.zero_()

    def forward(self, input: Tensor) -> Tensor:
        weight = 1 + self.weight if self.unit_offset else self.weight
        return IBF.ib_rms_norm(input, self.normalized_shape, weight, self.eps,
                               self.compression, self.strength, self.order, self.impl)

    def _groups(self, input: Tensor) -> tuple[Tensor, tuple[int, ...], bool]:
        return input, tuple(range(input.dim() - len(self.normalized_shape), input.dim())), False

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
                + ("unit_offset=True, " if self.unit_offset else "") + self._ib_repr())


class IBGroupNorm(_IBMixin, nn.Module):
    """IBNorm with ``nn.GroupNorm``'s grouping: per sample, per group of channels."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 device=None, dtype=None, *, bias: bool = True, compression: str = "power",
                 strength: Optional[float] = None,
                 learnable_strength: bool = False, order: str = COMPRESS_THEN_STANDARDIZE,
                 impl: Optional[str] = None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_groups = _check_positive_int("num_groups", num_groups)
        self.num_channels = _check_positive_int("num_channels", num_channels)
        if num_channels % num_groups != 0:
            raise ValueError(f"num_channels must be divisible by num_groups; got num_channels={num_channels}, num_groups={num_groups}")
        self.eps = _check_eps(eps)
        self.affine = affine
        self._register_affine((num_channels,), affine, affine and bias, factory)
        self._init_ib(compression, strength, learnable_strength, order, factory, impl)
        self.reset_parameters()

    def forward(self, input: Tensor) -> Tensor:
        return IBF.ib_group_norm(input, self.num_groups, self.weight, self.bias, self.eps,
                                 self.compression, self.strength, self.order, self.impl)

    def _groups(self, input: Tensor) -> tuple[Tensor, tuple[int, ...], bool]:
        return input.reshape(input.shape[0], self.num_groups, -1), (2,), True

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, " + self._ib_repr()


class _IBBatchNorm(_IBMixin, nn.Module):
    """IBNorm with ``nn.BatchNorm``'s grouping, running statistics and train/eval semantics.

    Running buffers: ``running_mean``/``running_var`` of ``x`` (as ``nn.BatchNorm``), and
    ``running_mean_c``, ``running_var_c``, ``running_var_u`` for step 3 of the definition, all updated with the
    same momentum (or a cumulative average when ``momentum=None``) and the unbiased-variance
    convention. Eval uses them in place of the batch statistics.

    After converting a trained ``nn.BatchNorm`` the step-3 buffers start at ``mean_c=0``,
    ``var_c=var_u=1``: exact at the identity compression, an approximation otherwise until a few
    training batches (or a recalibration pass in train mode) have updated them.
    """

    _expected_dims: tuple[int, ...] = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None, *, bias: bool = True,
                 compression: str = "power",
                 strength: Optional[float] = None, learnable_strength: bool = False,
                 order: str = COMPRESS_THEN_STANDARDIZE, impl: Optional[str] = None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_features = _check_positive_int("num_features", num_features)
        self.eps = _check_eps(eps)
        if momentum is not None and (isinstance(momentum, bool) or not 0.0 <= float(momentum) <= 1.0):
            raise ValueError(f"momentum must be None or a float in [0, 1]; got {momentum!r}")
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self._register_affine((num_features,), affine, affine and bias, factory)
        names = ("running_mean", "running_var", "running_mean_c", "running_var_c", "running_var_u")
        if track_running_stats:
            for name in names:
                self.register_buffer(name, torch.empty(num_features, **factory))
            self.register_buffer("num_batches_tracked",
                                 torch.tensor(0, dtype=torch.long, device=device))
        else:
            for name in names + ("num_batches_tracked",):
                self.register_buffer(name, None)
        self._init_ib(compression, strength, learnable_strength, order, factory, impl)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            for name in ("running_mean", "running_mean_c"):
                getattr(self, name).zero_()
            for name in ("running_var", "running_var_c", "running_var_u"):
                getattr(self, name).fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        reset_affine(self)
        self._reset_strength()

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in self._expected_dims:
            want = " or ".join(f"{d}D" for d in self._expected_dims)
            raise ValueError(f"input must be {want} for {type(self).__name__}; got {input.dim()}D input")
        if input.shape[1] != self.num_features:
            raise ValueError(f"input must have {self.num_features} channels in dim 1; got shape {list(input.shape)}")

    def _momentum_factor(self) -> float:
        # Same rule as nn.BatchNorm: count batches, cumulative average when momentum is None.
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                return 1.0 / float(self.num_batches_tracked)
        return 0.0 if self.momentum is None else self.momentum

    def running_stats(self) -> Optional[R.GroupStats]:
        if not self.track_running_stats:
            return None
        return R.GroupStats(self.running_mean, self.running_var, self.running_mean_c,
                              self.running_var_c, self.running_var_u)

    def _reduce(self) -> Optional[R.Reduce]:
        """How batch statistics are summed over processes; None: this process's batch only."""
        return None

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        return IBF.ib_batch_norm(input, self.running_stats(), self.weight, self.bias, self.training,
                                 self._momentum_factor(), self.eps, self.compression, self.strength, self.order,
                                 self._reduce(), self.impl)

    def _groups(self, input: Tensor) -> tuple[Tensor, tuple[int, ...], bool]:
        return input, (0,) + tuple(range(2, input.dim())), True

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}, " + self._ib_repr())


class IBBatchNorm1d(_IBBatchNorm):
    """Batch-grouped IBNorm for ``(N, C)`` or ``(N, C, L)`` input, like ``nn.BatchNorm1d``."""

    _expected_dims = (2, 3)


class IBBatchNorm2d(_IBBatchNorm):
    """Batch-grouped IBNorm for ``(N, C, H, W)`` input, like ``nn.BatchNorm2d``."""

    _expected_dims = (4,)


class IBBatchNorm3d(_IBBatchNorm):
    """Batch-grouped IBNorm for ``(N, C, D, H, W)`` input, like ``nn.BatchNorm3d``."""

    _expected_dims = (5,)


IB_CLASS_BY_GROUPING: dict[str, type] = {
    "layer": IBLayerNorm, "rms": IBRMSNorm, "batch1d": IBBatchNorm1d, "batch2d": IBBatchNorm2d,
    "batch3d": IBBatchNorm3d, "group": IBGroupNorm,
}
IB_LAYERS = tuple(IB_CLASS_BY_GROUPING.values())
