r"""IBNorm as one ``torch.autograd.Function`` with a hand-derived backward, for every grouping and op.

Backward memory: only the input, the affine weight and per-group statistics are saved (like
``nn.LayerNorm``); ``u``, ``c`` and ``z`` are recomputed in the backward.

Derivation (per group of ``M`` values; ``mean`` is over the group; RMS grouping: drop every centring
term, i.e. ``mu = 0``, ``m_c = 0``, ``G1 = 0``, ``mean(g_u) = 0``)::

    forward                                     backward, given g_y
    r   = 1 / sqrt(var(x) + eps)                 g_z = g_y * w          dw = sum(g_y * z), db = sum(g_y)
    u   = (x - mu) r                             G1  = mean(g_z),  G2 = mean(g_z * d)
    c   = s(u)                                   g_c = k (g_z - G1) - k G2 d / (v_c + eps)
    d   = c - m_c,  m_c = mean(c)                g_u = g_c s'(u) + k G2 u / (v_u + eps)
    v_c = mean(d^2),  v_u = var(x) r^2           g_x = r (g_u - mean(g_u) - u mean(g_u u))
    k   = sqrt((v_u + eps) / (v_c + eps))        g_lam = sum(g_c * ds/dlam(u))
    z   = d k,   y = w z + b

``g_c``: ``z_i = k (c_i - m_c)`` gives ``k (g_z - G1)`` directly, and through ``k(v_c)``,
``dk/dv_c = -k / (2 (v_c + eps))``, ``dv_c/dc_i = 2 d_i / M`` the term in ``G2`` (``sum(g_z d) = M G2``).
``g_u``: the chain through ``s``, plus the path through ``v_u = var(u)``
(``dk/dv_u = k / (2 (v_u + eps))``, ``dv_u/du_i = 2 u_i / M``). ``g_x``: the LayerNorm backward, exact
for ``u`` with ``eps``. Order ``standardize_then_compress``: ``z = s(u)``, ``g_u = g_z s'(u)``.
Derivatives of the ops (``a = |u|``): power ``s' = (1 + a)^(lam - 1)``,
``ds/dlam = sign(u) (L E / lam - (E - 1) / lam^2)`` with ``L = log1p(a)``, ``E = (1 + a)^lam``;
log ``s' = 1 / (1 + lam a)``, ``ds/dlam = sign(u) (a / (lam (1 + lam a)) - log1p(lam a) / lam^2)``;
tanh ``s' = 1 - t^2``, ``ds/dlam = u (1 - t^2) / lam - t / lam^2`` with ``t = tanh(lam u)``.
``tests/test_kernels.py`` checks all of it with ``gradcheck`` against the eager reference.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from ..functional import COMPRESS_THEN_STANDARDIZE, compute_dtype


def op_terms(u: Tensor, op: str, lam, need_dlam: bool) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """``(s(u), s'(u), ds/dlam or None)`` with shared intermediate values."""
    if op == "tanh":
        t = torch.tanh(lam * u)
        ds = 1 - t * t
        return t / lam, ds, (u * ds / lam - t / (lam * lam)) if need_dlam else None
    a = u.abs()
    sgn = torch.sign(u)
    if op == "power":
        L = torch.log1p(a)
        e = torch.exp(lam * L)
        s = sgn * (e - 1) / lam
        return s, e / (1 + a), (sgn * (L * e / lam - (e - 1) / (lam * lam))) if need_dlam else None
    if op == "log":
        q = 1 + lam * a
        lq = torch.log(q)
        return sgn * lq / lam, 1 / q, (sgn * (a / (lam * q) - lq / (lam * lam))) if need_dlam else None
    raise ValueError(f"compression must be power, log or tanh for op_terms; got {op!r}")


def _mean(t: Tensor, dims: tuple) -> Tensor:
    return t.mean(dim=dims, keepdim=True)


def _sum_to(t: Tensor, wview: tuple) -> Tensor:
    """Sum ``t`` down to the (right-aligned) broadcast shape ``wview`` (for the affine gradients)."""
    shape = [1] * (t.dim() - len(wview)) + list(wview)
    dims = [i for i, (a, b) in enumerate(zip(t.shape, shape)) if b == 1 and a != 1]
    return t.sum(dim=dims, keepdim=True) if dims else t


class IBNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], lam_t: Optional[Tensor],
                dims: tuple, centered: bool, eps: float, op: str, lam: Optional[float], order: str, wview: tuple):
        f = compute_dtype(x.dtype)
        xf = x.to(f)
        lam_v = lam_t.to(f) if lam_t is not None else lam
        if centered:
            var, mu = torch.var_mean(xf, dim=dims, correction=0, keepdim=True)
        else:
            mu, var = None, _mean(xf * xf, dims)
        r = torch.rsqrt(var + eps)
        u = (xf - mu) * r if centered else xf * r
        m_c = v_c = v_u = k = None
        if op == "none":
            z = u
        elif order != COMPRESS_THEN_STANDARDIZE:
            z, _, _ = op_terms(u, op, lam_v, False)
        else:
            c, _, _ = op_terms(u, op, lam_v, False)
            if centered:
                m_c = _mean(c, dims)
                d = c - m_c
            else:
                d = c
            v_c = _mean(d * d, dims)
            v_u = var * r * r
            k = torch.sqrt((v_u + eps) / (v_c + eps))
            z = d * k
        y = z
        if weight is not None:
            y = y * weight.to(f).reshape(wview)
        if bias is not None:
            y = y + bias.to(f).reshape(wview)
        ctx.save_for_backward(x, weight, lam_t, mu, r, m_c, v_c, v_u, k)
        ctx.cfg = (dims, centered, eps, op, lam, order, wview, bias is not None)
        stats = [t if t is not None else torch.empty(0) for t in (mu, var, m_c, v_c, v_u)]
        ctx.mark_non_differentiable(*stats)
        return (y.to(x.dtype), *stats)

    @staticmethod
    def backward(ctx, gy: Tensor, *unused):
        x, weight, lam_t, mu, r, m_c, v_c, v_u, k = ctx.saved_tensors
        dims, centered, eps, op, lam, order, wview, has_bias = ctx.cfg
        f = compute_dtype(x.dtype)
        xf, gyf = x.to(f), gy.to(f)
        lam_v = lam_t.to(f) if lam_t is not None else lam
        u = (xf - mu) * r if centered else xf * r
        need_lam = lam_t is not None and ctx.needs_input_grad[3]
        g_z = gyf * weight.to(f).reshape(wview) if weight is not None else gyf
        g_lam = None
        if op == "none":
            z, g_u = u, g_z
        elif order != COMPRESS_THEN_STANDARDIZE:
            z, ds, dlam = op_terms(u, op, lam_v, need_lam)
            g_u = g_z * ds
            if need_lam:
                g_lam = (g_z * dlam).sum()
        else:
            c, ds, dlam = op_terms(u, op, lam_v, need_lam)
            d = c - m_c if centered else c
            z = d * k
            g2 = _mean(g_z * d, dims)
            g_c = (g_z - _mean(g_z, dims) if centered else g_z) * k - (k * g2 / (v_c + eps)) * d
            g_u = g_c * ds + (k * g2 / (v_u + eps)) * u
            if need_lam:
                g_lam = (g_c * dlam).sum()
        gu_u = _mean(g_u * u, dims)
        g_x = (g_u - _mean(g_u, dims) - u * gu_u) * r if centered else (g_u - u * gu_u) * r
        g_w = g_b = None
        if weight is not None and ctx.needs_input_grad[1]:
            g_w = _sum_to(gyf * z, wview).reshape(weight.shape).to(weight.dtype)
        if has_bias and ctx.needs_input_grad[2]:
            g_b = _sum_to(gyf, wview).reshape(-1 if weight is None else weight.shape).to(x.dtype)
        if g_lam is not None:
            g_lam = g_lam.to(lam_t.dtype)
        return g_x.to(x.dtype), g_w, g_b, g_lam, None, None, None, None, None, None, None


def fused_ib_norm(x: Tensor, dims: Sequence[int], centered: bool, eps: float, compression: str, strength,
                  order: str, weight: Optional[Tensor], bias: Optional[Tensor], wview: Sequence[int]):
    """``(y, (mean_x, var_x, mean_c, var_c, var_u))`` for one grouping; empty tensors for unused statistics."""
    lam_t = strength if isinstance(strength, Tensor) else None
    lam = None if lam_t is not None else strength
    out = IBNormFunction.apply(x, weight, bias, lam_t, tuple(dims), centered, float(eps), compression, lam, order,
                               tuple(wview))
    return out[0], out[1:]
