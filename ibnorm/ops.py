"""The compression ops of IBNorm (step 2 of the definition, ``c = s(u)``): the one source of their math.

Every op is odd, increasing, ``s(0) = 0``, ``s'(0) = 1``, ``0 < s' <= 1`` and ``|s(u)| <= |u|``
(``docs/method.md``). Each entry of :data:`COMPRESSIONS` carries everything any implementation needs:

- ``s``: the formula as the reference evaluates it, with an exact autograd derivative everywhere;
- ``terms``: ``(s(u), s'(u), ds/dlam(u))`` sharing intermediate values, used by the hand-derived backward;
- the strength range, the default strength, the strength at which ``s`` is the identity;
- ``code``: the op's number in the compiled kernels (C++ and Triton). ``tests/test_ops.py`` checks those
  kernels' formulas against ``terms`` value by value, through these codes.

=========  =========  ===============================================  ================  ==============
name       variant    ``s(u)``                                         strength range    identity when
=========  =========  ===============================================  ================  ==============
``power``  IBNorm-S   ``sign(u) * ((1 + |u|)**lam - 1) / lam``          ``0 < lam <= 1``  ``lam = 1``
``log``    IBNorm-L   ``sign(u) * log1p(lam * |u|) / lam``              ``lam > 0``       ``lam -> 0``
``tanh``   IBNorm-T   ``tanh(lam * u) / lam``                           ``lam > 0``       ``lam -> 0``
``none``   identity   ``u``                                             (no strength)     always
=========  =========  ===============================================  ================  ==============

``power`` is evaluated as ``expm1(lam * log1p(|u|)) / lam``: the same function, accurate for small
``|u|`` and cheaper than ``pow`` at exponents other than 0.5.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

Strength = Union[float, Tensor]
Terms = tuple[Tensor, Tensor, Optional[Tensor]]  # s(u), s'(u), ds/dlam(u) (None when not asked for)

COMPRESS_THEN_STANDARDIZE = "compress_then_standardize"
ORDERS = (COMPRESS_THEN_STANDARDIZE, "standardize_then_compress")


def _odd(g: Callable[[Tensor], Tensor], u: Tensor) -> Tensor:
    """``sign(u) * g(|u|)`` with the correct derivative ``g'(0)`` at ``u = 0``.

    ``sign(u) * g(abs(u))`` differentiates to 0 at ``u = 0`` in autograd (``sign'`` and ``abs'`` are 0
    there), but every op has ``s'(0) = 1``. ``clamp(min=0)`` passes the gradient at 0 and ``where``
    sends it to one branch only, so the derivative is exact everywhere, 0 included.
    """
    return torch.where(u >= 0, g(u.clamp(min=0)), -g((-u).clamp(min=0)))


# --- power (IBNorm-S): s = sign(u) ((1 + a)^lam - 1) / lam, a = |u| ----------------------------------

def _power(u: Tensor, lam: Strength) -> Tensor:
    return _odd(lambda a: torch.expm1(lam * torch.log1p(a)) / lam, u)


def _power_terms(u: Tensor, lam: Strength, need_dlam: bool) -> Terms:
    # s' = (1 + a)^(lam - 1);  ds/dlam = sign(u) (L E / lam - (E - 1) / lam^2), L = log1p(a), E = (1 + a)^lam
    a, sgn = u.abs(), torch.sign(u)
    L = torch.log1p(a)
    e = torch.exp(lam * L)
    dlam = sgn * (L * e / lam - (e - 1) / (lam * lam)) if need_dlam else None
    return sgn * (e - 1) / lam, e / (1 + a), dlam


# --- log (IBNorm-L): s = sign(u) log1p(lam a) / lam ---------------------------------------------------

def _log(u: Tensor, lam: Strength) -> Tensor:
    return _odd(lambda a: torch.log1p(lam * a) / lam, u)


def _log_terms(u: Tensor, lam: Strength, need_dlam: bool) -> Terms:
    # s' = 1 / (1 + lam a);  ds/dlam = sign(u) (a / (lam (1 + lam a)) - log1p(lam a) / lam^2)
    a, sgn = u.abs(), torch.sign(u)
    q = 1 + lam * a
    lq = torch.log(q)
    dlam = sgn * (a / (lam * q) - lq / (lam * lam)) if need_dlam else None
    return sgn * lq / lam, 1 / q, dlam


# --- tanh (IBNorm-T): s = tanh(lam u) / lam -----------------------------------------------------------

def _tanh(u: Tensor, lam: Strength) -> Tensor:
    return torch.tanh(lam * u) / lam


def _tanh_terms(u: Tensor, lam: Strength, need_dlam: bool) -> Terms:
    # s' = 1 - t^2;  ds/dlam = u (1 - t^2) / lam - t / lam^2, t = tanh(lam u)
    t = torch.tanh(lam * u)
    ds = 1 - t * t
    return t / lam, ds, (u * ds / lam - t / (lam * lam)) if need_dlam else None


# --- none: the base norm itself -----------------------------------------------------------------------

def _none(u: Tensor, lam: Strength) -> Tensor:
    return u


def _none_terms(u: Tensor, lam: Strength, need_dlam: bool) -> Terms:
    return u, torch.ones_like(u), torch.zeros_like(u) if need_dlam else None


@dataclass(frozen=True)
class CompressionOp:
    """One compression op: its formulas, the valid strength interval, its default and its kernel code."""

    name: str
    variant: str
    code: int  # the op's number in the compiled kernels (kernels/csrc/ibnorm_cpu.cpp, kernels/triton_rows.py)
    s: Callable[[Tensor, Strength], Tensor]  # the reference formula, exact under autograd
    terms: Callable[[Tensor, Strength, bool], Terms]  # (s, s', ds/dlam) for the hand-derived backward
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
    "power": CompressionOp("power", "IBNorm-S", 0, _power, _power_terms, 0.0, 1.0, True, 0.5, 1.0),
    "log": CompressionOp("log", "IBNorm-L", 1, _log, _log_terms, 0.0, math.inf, False, 0.5, None),
    "tanh": CompressionOp("tanh", "IBNorm-T", 2, _tanh, _tanh_terms, 0.0, math.inf, False, 0.5, None),
    "none": CompressionOp("none", "identity", 3, _none, _none_terms, 0.0, math.inf, False, None, None),
}

# Short names used by the paper (S/L/T) and by the registry ("ib_layer_t").
ALIASES = {"s": "power", "l": "log", "t": "tanh", "identity": "none"}


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
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real):  # numpy floats are Real too
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
    """Apply step 2, ``c = s(u)``, elementwise. ``strength`` may be a float or a tensor."""
    op = get_compression(compression)
    if not op.has_strength:
        return u
    return op.s(u, op.default if strength is None else strength)


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
