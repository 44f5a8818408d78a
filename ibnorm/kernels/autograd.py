"""IBNorm as one ``torch.autograd.Function`` with a hand-derived backward, for every grouping and op.

Backward memory: only the input, the affine weight and per-group statistics are saved (like
``nn.LayerNorm``); ``u``, ``c`` and ``z`` are recomputed in the backward. The derivation is in
``docs/method.md`` ("The backward"); the ops' ``s'`` and ``ds/dlam`` come from :mod:`ibnorm.ops`.
``tests/test_kernels.py`` checks all of it with ``gradcheck`` against the reference.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from ..ops import COMPRESS_THEN_STANDARDIZE, get_compression
from ..reference import compute_dtype


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
            z, _, _ = get_compression(op).terms(u, lam_v, False)
        else:
            c, _, _ = get_compression(op).terms(u, lam_v, False)
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
        if torch.is_grad_enabled():  # create_graph=True: gradients that can be differentiated again
            from .higher_order import reference_grads
            g_x, g_w, g_lam = reference_grads(gy, x, weight, lam_t, lam, dims, centered, eps, op, order, wview,
                                              weight is not None and ctx.needs_input_grad[1],
                                              lam_t is not None and ctx.needs_input_grad[3])
            g_b = _sum_to(gy.to(compute_dtype(x.dtype)), wview).reshape(-1 if weight is None else weight.shape).to(
                x.dtype) if has_bias and ctx.needs_input_grad[2] else None
            return g_x, g_w, g_b, g_lam, None, None, None, None, None, None, None
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
            z, ds, dlam = get_compression(op).terms(u, lam_v, need_lam)
            g_u = g_z * ds
            if need_lam:
                g_lam = (g_z * dlam).sum()
        else:
            c, ds, dlam = get_compression(op).terms(u, lam_v, need_lam)
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


def ib_norm_autograd(x: Tensor, dims: Sequence[int], centered: bool, eps: float, compression: str, strength,
                  order: str, weight: Optional[Tensor], bias: Optional[Tensor], wview: Sequence[int]):
    """``(y, (mean_x, var_x, mean_c, var_c, var_u))`` for one grouping; empty tensors for unused statistics."""
    lam_t = strength if isinstance(strength, Tensor) else None
    lam = None if lam_t is not None else strength
    out = IBNormFunction.apply(x, weight, bias, lam_t, tuple(dims), centered, float(eps), compression, lam, order,
                               tuple(wview))
    return out[0], out[1:]
