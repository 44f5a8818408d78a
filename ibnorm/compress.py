"""The compression ops of IBNorm (SPEC step 2): ``c = s(u)`` applied elementwise.

Every op is odd, increasing, ``s(0) = 0``, ``s'(0) = 1``, ``0 < s' <= 1`` and ``|s(u)| <= |u|``.
This module is the only place their formulas, strength ranges and defaults live.

=========  =========  ===============================================  ================  ==============
name       variant    ``s(u)``                                         strength range    identity when
=========  =========  ===============================================  ================  ==============
``power``  IBNorm-S   ``sign(u) * ((1 + |u|)**lam - 1) / lam``          ``0 < lam <= 1``  ``lam = 1``
``log``    IBNorm-L   ``sign(u) * log1p(lam * |u|) / lam``              ``lam > 0``       ``lam -> 0``
``tanh``   IBNorm-T   ``tanh(lam * u) / lam``                           ``lam > 0``       ``lam -> 0``
``none``   identity   ``u``                                             (no strength)     always
=========  =========  ===============================================  ================  ==============

``power`` is evaluated as ``expm1(lam * log1p(|u|)) / lam``: the same function, accurate for small
``|u|`` and cheaper than ``pow`` at exponents other than 0.5 (see PERF_NOTES).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

Strength = Union[float, Tensor]


def _odd(g: Callable[[Tensor], Tensor], u: Tensor) -> Tensor:
    """``sign(u) * g(|u|)`` with the correct derivative ``g'(0)`` at ``u = 0``.

    ``sign(u) * g(abs(u))`` differentiates to 0 at ``u = 0`` in autograd (``sign'`` and ``abs'`` are 0
    there), but every op has ``s'(0) = 1``. ``clamp(min=0)`` passes the gradient at 0 and ``where``
    sends it to one branch only, so the derivative is exact everywhere, 0 included.
    """
    pos = u >= 0
    return torch.where(pos, g(u.clamp(min=0)), -g((-u).clamp(min=0)))


def _power(u: Tensor, lam: Strength) -> Tensor:
    return _odd(lambda a: torch.expm1(lam * torch.log1p(a)) / lam, u)


def _log(u: Tensor, lam: Strength) -> Tensor:
    return _odd(lambda a: torch.log1p(lam * a) / lam, u)


def _tanh(u: Tensor, lam: Strength) -> Tensor:
    return torch.tanh(lam * u) / lam


def _none(u: Tensor, lam: Strength) -> Tensor:
    return u


@dataclass(frozen=True)
class CompressionOp:
    """One compression op: its formula, the valid strength interval and its default strength."""

    name: str
    variant: str
    fn: Callable[[Tensor, Strength], Tensor]
    low: float  # exclusive lower bound of the strength
    high: float  # upper bound (inclusive when high_inclusive), math.inf for none
    high_inclusive: bool
    default: Optional[float]
    identity_strength: Optional[float]  # strength at which s is exactly the identity, if any

    @property
    def has_strength(self) -> bool:
        return self.default is not None

    def range_text(self) -> str:
        if not self.has_strength:
            return "no strength (identity op)"
        hi = "inf" if math.isinf(self.high) else f"{self.high:g}"
        right = "]" if self.high_inclusive else ")"
        return f"({self.low:g}, {hi}{right}"

    def contains(self, value: float) -> bool:
        if not math.isfinite(value) or value <= self.low:
            return False
        return value <= self.high if self.high_inclusive else value < self.high


COMPRESSIONS: dict[str, CompressionOp] = {
    "power": CompressionOp("power", "IBNorm-S", _power, 0.0, 1.0, True, 0.5, 1.0),
    "log": CompressionOp("log", "IBNorm-L", _log, 0.0, math.inf, False, 0.5, None),
    "tanh": CompressionOp("tanh", "IBNorm-T", _tanh, 0.0, math.inf, False, 0.5, None),
    "none": CompressionOp("none", "identity", _none, 0.0, math.inf, False, None, None),
}

# Short names used by the paper (S/L/T) and by the registry ("ib_layer_t").
ALIASES = {"s": "power", "l": "log", "t": "tanh", "identity": "none"}

ORDERS = ("compress_then_standardize", "standardize_then_compress")


def get_compression(name: str) -> CompressionOp:
    """Look up a compression op by name or alias (``power``/``s``, ``log``/``l``, ``tanh``/``t``, ``none``)."""
    if not isinstance(name, str):
        raise TypeError(f"compression must be a str, one of {sorted(COMPRESSIONS)}; got {type(name).__name__}")
    key = ALIASES.get(name.lower(), name.lower())
    if key not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {sorted(COMPRESSIONS)} (aliases {ALIASES}); got {name!r}")
    return COMPRESSIONS[key]


def resolve_strength(compression: str, strength: Optional[float]) -> Optional[float]:
    """Validate ``strength`` for ``compression``; ``None`` gives the op's default.

    Returns ``None`` for the ``none`` op (which takes no strength).
    """
    op = get_compression(compression)
    if not op.has_strength:
        if strength is not None:
            raise ValueError(f"strength must be None for compression='none'; got {strength!r}")
        return None
    if strength is None:
        return op.default
    if isinstance(strength, bool) or not isinstance(strength, (int, float)):
        raise TypeError(f"strength must be a float in {op.range_text()} for compression={op.name!r}; "
                        f"got {type(strength).__name__}")
    strength = float(strength)
    if not op.contains(strength):
        raise ValueError(f"strength must be in {op.range_text()} for compression={op.name!r}; got {strength!r}")
    return strength


def check_order(order: str) -> str:
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}; got {order!r}")
    return order


def compress(u: Tensor, compression: str, strength: Optional[Strength]) -> Tensor:
    """Apply SPEC step 2, ``c = s(u)``, elementwise. ``strength`` may be a float or a tensor."""
    op = get_compression(compression)
    if not op.has_strength:
        return u
    if strength is None:
        strength = op.default
    return op.fn(u, strength)


# --- learnable strength: an unconstrained raw parameter mapped into the op's range -------------

LEARNABLE_FLOOR = 1e-3  # keeps a learned strength away from 0, where s(u) = (...) / lam is 0/0


def strength_to_raw(compression: str, strength: float) -> float:
    """Inverse of :func:`raw_to_strength`: the raw value whose mapped strength is ``strength``.

    ``power`` uses ``lam = f + (1 - f) * sigmoid(raw)`` (range (f, 1), f = ``LEARNABLE_FLOOR``); strength 1
    itself is unreachable, so it is initialised at ``1 - 1e-4``. ``log``/``tanh`` use
    ``lam = f + softplus(raw)`` (range (f, inf)).
    """
    op = get_compression(compression)
    f = LEARNABLE_FLOOR
    if op.name == "power":
        p = (min(max(strength, f + 1e-6), 1.0 - 1e-4) - f) / (1.0 - f)
        return math.log(p / (1.0 - p))
    if op.name in ("log", "tanh"):
        s = max(strength - f, 1e-6)
        # softplus^-1(s) = log(expm1(s)); for large s it is s itself.
        return s if s > 20 else math.log(math.expm1(s))
    raise ValueError("learnable_strength needs a compression with a strength (power, log or tanh); got 'none'")


def raw_to_strength(compression: str, raw: Tensor) -> Tensor:
    op = get_compression(compression)
    if op.name == "power":
        return LEARNABLE_FLOOR + (1.0 - LEARNABLE_FLOOR) * torch.sigmoid(raw)
    return LEARNABLE_FLOOR + F.softplus(raw)
