"""Gradients that can be differentiated again: the backward every kernel takes when ``create_graph=True``.

The compiled kernels' backwards (C++, Triton) and the autograd Function's hand-derived one compute first-order
gradients from statistics saved without a graph, so a second derivative through them (a gradient penalty,
``gradgradcheck``, a Hessian-vector product) would be wrong. Each of them therefore checks grad mode in its backward,
which autograd enables only under ``create_graph=True``, and then computes the same gradients here instead: the
reference forward recomputed under autograd and differentiated with ``create_graph=True``, which autograd can
differentiate again, to any order. A first-order backward never comes here and costs nothing more.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from ..ops import COMPRESS_THEN_STANDARDIZE, COMPRESSIONS
from ..reference import compute_dtype, ib_core

OP_BY_CODE = {op.code: name for name, op in COMPRESSIONS.items()}


def _differentiable(t: Optional[Tensor]) -> Optional[Tensor]:
    """``t`` itself when it is part of a graph; otherwise a leaf copy that autograd can differentiate (a constant to
    the caller: nothing flows further back from it)."""
    if t is None or t.requires_grad:
        return t
    return t.detach().requires_grad_()


def reference_grads(gy: Tensor, x: Tensor, weight: Optional[Tensor], lam_t: Optional[Tensor], lam: float,
                    dims: Sequence[int], centered: bool, eps: float, op: str, order: str, wview: Sequence[int],
                    need_dw: bool, need_dl: bool) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """``(gx, gw, glam)`` of the reference forward (the bias' gradient is the caller's: a sum of ``gy``), each a
    function of ``gy``, ``x``, ``weight`` and ``lam_t`` that autograd can differentiate again. ``gw``/``glam`` are
    None where not asked for; every gradient has its input's dtype."""
    with torch.enable_grad():
        xg, wg, lg = _differentiable(x), _differentiable(weight), _differentiable(lam_t)
        f = compute_dtype(x.dtype)
        strength = None if not COMPRESSIONS[op].has_strength else (lg.to(f) if lg is not None else lam)
        z, _ = ib_core(xg.to(f), tuple(dims), centered, eps, op, strength, order)
        y = z * wg.to(f).reshape(wview) if wg is not None else z
        inputs = [xg] + ([wg] if need_dw and wg is not None else []) + ([lg] if need_dl and lg is not None else [])
        grads = list(torch.autograd.grad(y, inputs, gy.to(f), create_graph=True, allow_unused=True))
    gx = grads.pop(0)
    gx = torch.zeros_like(x) if gx is None else gx.to(x.dtype)
    gw = gl = None
    if need_dw and wg is not None:
        g = grads.pop(0)
        gw = torch.zeros_like(weight) if g is None else g.to(weight.dtype)
    if need_dl and lg is not None:
        g = grads.pop(0)
        gl = torch.zeros_like(lam_t) if g is None else g.to(lam_t.dtype)
    return gx, gw, gl


def order_of(cts: bool) -> str:
    return COMPRESS_THEN_STANDARDIZE if cts else "standardize_then_compress"
