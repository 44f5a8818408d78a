"""Names -> norm-layer factories, timm-style. Every factory takes the channel/feature count first.

Names: base norms (``layernorm``, ``rmsnorm``, ``batchnorm1d/2d/3d``, ``groupnorm``), every IBNorm
grouping x op (``ib_{layer,rms,batch1d,batch2d,batch3d,group}_{power,log,tanh,none}``; the paper's
letters work too: ``ib_layer_t`` = ``ib_layer_tanh``), NormalNorm (``normalnorm_layer``,
``normalnorm_batch1d``, ``normalnorm_batch2d``) Dynamic Tanh (``dyt``) and Dynamic erf (``derf``).
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Union

from torch import nn

from .ops import ALIASES, COMPRESSIONS
from .layers import IB_CLASS_BY_GROUPING
from .peers import BatchNormalNorm1d, BatchNormalNorm2d, DynamicErf, DynamicTanh, LayerNormalNorm

NormFactory = Callable[..., nn.Module]


def _group_norm_factory(cls: type) -> NormFactory:
    """GroupNorm takes ``num_groups`` first; registry factories take channels first (timm's convention)."""

    def make(num_channels: int, num_groups: int = 32, **kwargs: Any) -> nn.Module:
        return cls(min(num_groups, num_channels), num_channels, **kwargs)

    make.__name__ = make.__qualname__ = f"{cls.__name__}_channels_first"
    return make


# Channel-first factories per IBNorm grouping (only GroupNorm's argument order differs).
IB_GROUPINGS: dict[str, Callable[..., nn.Module]] = {
    kind: _group_norm_factory(cls) if kind == "group" else cls for kind, cls in IB_CLASS_BY_GROUPING.items()
}

_REGISTRY: dict[str, NormFactory] = {
    "layernorm": nn.LayerNorm,
    "rmsnorm": nn.RMSNorm,
    "batchnorm1d": nn.BatchNorm1d,
    "batchnorm2d": nn.BatchNorm2d,
    "batchnorm3d": nn.BatchNorm3d,
    "groupnorm": _group_norm_factory(nn.GroupNorm),
    "normalnorm_layer": LayerNormalNorm,
    "normalnorm_batch1d": BatchNormalNorm1d,
    "normalnorm_batch2d": BatchNormalNorm2d,
    "dyt": DynamicTanh,
    "derf": DynamicErf,
}
for _grouping, _factory in IB_GROUPINGS.items():
    for _op in COMPRESSIONS:
        _REGISTRY[f"ib_{_grouping}_{_op}"] = functools.partial(_factory, compression=_op)


def canonical_name(name: str) -> str:
    """Lower-case, ``-`` -> ``_``, and the paper's op letters (``s``/``l``/``t``) spelled out."""
    key = name.strip().lower().replace("-", "_")
    if key.startswith("ib_"):
        head, _, op = key.rpartition("_")
        key = f"{head}_{ALIASES.get(op, op)}"
    return key


def list_norm_layers() -> list[str]:
    return sorted(_REGISTRY)


def get_norm_layer(norm: Union[str, type, functools.partial, Callable[..., nn.Module]]) -> NormFactory:
    """Resolve a registry name, a class or a partial to a factory ``f(num_features, **kwargs)``."""
    if isinstance(norm, str):
        key = canonical_name(norm)
        if key not in _REGISTRY:
            raise ValueError(f"norm must be a registered name, one of {list_norm_layers()}; got {norm!r}")
        return _REGISTRY[key]
    if isinstance(norm, functools.partial) or (inspect.isclass(norm) and issubclass(norm, nn.Module)):
        return norm
    if callable(norm):
        return norm
    raise TypeError(f"norm must be a str, an nn.Module class or a partial; got {type(norm).__name__}")


def create_norm_layer(name: Union[str, type, functools.partial], num_features: Any, **kwargs: Any) -> nn.Module:
    """Build a norm layer by name: ``create_norm_layer("ib_layer_tanh", 768, strength=0.3)``."""
    factory = get_norm_layer(name)
    fixed = factory.keywords if isinstance(factory, functools.partial) else {}
    clash = {k: (fixed[k], v) for k, v in kwargs.items() if k in fixed and fixed[k] != v}
    if clash:
        raise ValueError(f"{name!r} fixes " + ", ".join(f"{k}={a!r}" for k, (a, _) in clash.items())
                         + "; it conflicts with " + ", ".join(f"{k}={b!r}" for k, (_, b) in clash.items())
                         + ": use the registry name that has it, or the class")
    return factory(num_features, **kwargs)
