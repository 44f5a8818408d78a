"""Triton kernels for last-dimension groups (layer and RMS grouping) on CUDA, forward and backward.

One program per row (``BLOCK >= M``, the whole row in registers), like Liger-Kernel's LayerNorm;
the backward recomputes ``u``, ``c`` and step 3's statistics from the input and the saved
``(mean, rstd)``, and accumulates the affine and strength gradients per program. The math is the
one derived in ``docs/method.md``. The launches are ``torch.library`` custom ops (``ibnorm::triton_rows_forward``
and ``_backward``) with fake implementations and registered autograd, so ``torch.compile`` traces them whole; a
learned strength is read from its tensor on the device. Correctness is tested on CPU with ``TRITON_INTERPRET=1``
(``tests/test_triton.py``, skipped without the ``triton`` package); it is never required by CI.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..ops import get_compression

try:
    import triton
    import triton.language as tl
    HAVE_TRITON = True
except ImportError:  # pragma: no cover - optional dependency
    HAVE_TRITON = False


if HAVE_TRITON:
    @triton.jit
    def _log1p(a):
        v = 1.0 + a
        return tl.where(v == 1.0, a, tl.log(v) * a / (v - 1.0))

    @triton.jit
    def _expm1(t):
        series = t * (1.0 + t * (0.5 + t * (1.0 / 6.0 + t * (1.0 / 24.0))))
        return tl.where(tl.abs(t) < 1e-2, series, tl.exp(t) - 1.0)

    @triton.jit
    def _tanh(y):
        a = tl.abs(y)
        big = 1.0 - 2.0 / (tl.exp(2.0 * a) + 1.0)
        z = a * a
        series = a * (1.0 + z * (-1.0 / 3.0 + z * (2.0 / 15.0 + z * (-17.0 / 315.0))))
        t = tl.where(a < 0.05, series, big)
        return tl.where(y < 0, -t, t)

    @triton.jit
    def _terms(u, lam, OP: tl.constexpr):
        """s(u), s'(u), ds/dlam(u)."""
        a = tl.abs(u)
        sgn = tl.where(u < 0, -1.0, 1.0)
        if OP == 0:
            L = _log1p(a)
            em1 = _expm1(lam * L)
            s = sgn * em1 / lam
            ds = (em1 + 1.0) / (1.0 + a)
            dl = sgn * (L * (em1 + 1.0) / lam - em1 / (lam * lam))
        elif OP == 1:
            la = lam * a
            lq = _log1p(la)
            s = sgn * lq / lam
            ds = 1.0 / (1.0 + la)
            dl = sgn * (a * ds / lam - lq / (lam * lam))
        elif OP == 2:
            t = _tanh(lam * u)
            s = t / lam
            ds = 1.0 - t * t
            dl = u * ds / lam - t / (lam * lam)
        else:
            s = u
            ds = u * 0.0 + 1.0
            dl = u * 0.0
        return s, ds, dl

    @triton.jit
    def _terms_kernel(U, S, DS, DL, n, lam, OP: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        u = tl.load(U + offs, mask=mask, other=0.0)
        s, ds, dl = _terms(u, lam, OP)
        tl.store(S + offs, s, mask=mask)
        tl.store(DS + offs, ds, mask=mask)
        tl.store(DL + offs, dl, mask=mask)

    @triton.jit
    def _centre(v, mask, M, CENTERED: tl.constexpr):
        """(mean, v - mean, biased variance) of one row; RMS grouping: (0, v, mean square)."""
        v = tl.where(mask, v, 0.0)
        if CENTERED:
            m = tl.sum(v, axis=0) / M
        else:
            m = 0.0
        d = tl.where(mask, v - m, 0.0)
        return m, d, tl.sum(d * d, axis=0) / M

    @triton.jit
    def _step3(c, u, mask, M, eps, CENTERED: tl.constexpr):
        """Step 3's pieces for one row: d = c - mean(c) (RMS: c), k, var(c), var(u)."""
        _, d, v_c = _centre(c, mask, M, CENTERED)
        v_u = tl.sum(u * u, axis=0) / M
        return d, tl.sqrt((v_u + eps) / (v_c + eps)), v_c, v_u

    @triton.jit
    def _fwd_kernel(X, Y, Wt, Bs, Mean, Rstd, LamP, stride, M, lam, eps, OP: tl.constexpr, CENTERED: tl.constexpr,
                    CTS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, LAM_PTR: tl.constexpr,
                    BLOCK: tl.constexpr):
        if LAM_PTR:  # a learned strength is read on the device: no host sync
            lam = tl.load(LamP).to(tl.float32)
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < M
        x = tl.load(X + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
        mu, xc, var = _centre(x, mask, M, CENTERED)
        r = 1.0 / tl.sqrt(var + eps)
        u = xc * r
        if OP == 3:
            z = u
        else:
            c, _, _ = _terms(u, lam, OP)
            if CTS:
                d, k, _, _ = _step3(c, u, mask, M, eps, CENTERED)
                z = d * k
            else:
                z = tl.where(mask, c, 0.0)
        if HAS_W:
            z = z * tl.load(Wt + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_B:
            z = z + tl.load(Bs + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + row * stride + cols, z.to(Y.dtype.element_ty), mask=mask)
        tl.store(Mean + row, mu)
        tl.store(Rstd + row, r)

    @triton.jit
    def _bwd_kernel(X, G, GX, Wt, Mean, Rstd, DW, DB, DL, LamP, stride, M, R, rows_per_prog, lam, eps,
                    OP: tl.constexpr, CENTERED: tl.constexpr, CTS: tl.constexpr, HAS_W: tl.constexpr,
                    LAM_PTR: tl.constexpr, BLOCK: tl.constexpr):
        if LAM_PTR:
            lam = tl.load(LamP).to(tl.float32)
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < M
        dw = tl.zeros((BLOCK,), dtype=tl.float32)
        db = tl.zeros((BLOCK,), dtype=tl.float32)
        dl_acc = tl.zeros((BLOCK,), dtype=tl.float32)
        if HAS_W:
            w = tl.load(Wt + cols, mask=mask, other=0.0).to(tl.float32)
        else:
            w = tl.where(mask, 1.0, 0.0)
        for i in range(0, rows_per_prog):
            row = pid * rows_per_prog + i
            if row < R:
                x = tl.load(X + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
                g = tl.load(G + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
                mu = tl.load(Mean + row)
                r = tl.load(Rstd + row)
                u = tl.where(mask, (x - mu) * r, 0.0)
                gz = g * w
                if OP == 3:
                    z = u
                    gu = gz
                else:
                    c, ds, dlam = _terms(u, lam, OP)
                    if CTS:
                        d, k, v_c, v_u = _step3(c, u, mask, M, eps, CENTERED)
                        if CENTERED:
                            G1 = tl.sum(gz, axis=0) / M
                        else:
                            G1 = 0.0
                        z = d * k
                        G2 = tl.sum(gz * d, axis=0) / M
                        gc = (gz - G1) * k - (k * G2 / (v_c + eps)) * d
                        gu = gc * ds + (k * G2 / (v_u + eps)) * u
                        dl_acc += tl.where(mask, gc * dlam, 0.0)
                    else:
                        z = tl.where(mask, c, 0.0)
                        gu = gz * ds
                        dl_acc += tl.where(mask, gz * dlam, 0.0)
                gu = tl.where(mask, gu, 0.0)
                if CENTERED:
                    su = tl.sum(gu, axis=0) / M
                else:
                    su = 0.0
                suu = tl.sum(gu * u, axis=0) / M
                gx = (gu - su - u * suu) * r
                tl.store(GX + row * stride + cols, gx.to(GX.dtype.element_ty), mask=mask)
                dw += g * z
                db += g
        tl.store(DW + pid * M + cols, dw, mask=mask)
        tl.store(DB + pid * M + cols, db, mask=mask)
        tl.store(DL + pid, tl.sum(dl_acc, axis=0))


def op_terms(u: Tensor, op: str, lam: float) -> tuple[Tensor, Tensor, Tensor]:
    """``s(u), s'(u), ds/dlam(u)`` of one op as the kernels evaluate them (float32), for tests."""
    u = u.float().contiguous().reshape(-1)
    s, ds, dl = torch.empty_like(u), torch.empty_like(u), torch.empty_like(u)
    _terms_kernel[(triton.cdiv(u.numel(), 1024),)](u, s, ds, dl, u.numel(), lam, OP=get_compression(op).code,
                                                   BLOCK=1024)
    return s, ds, dl


@torch.library.custom_op("ibnorm::triton_rows_forward", mutates_args=())
def rows_forward(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], lam_t: Optional[Tensor], lam: float,
                 op: int, centered: bool, cts: bool, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(y, mean, rstd)`` of ``x`` ``[R, M]`` (contiguous), one program per row."""
    R, m = x.shape
    y = torch.empty_like(x)
    mean = torch.empty(R, device=x.device, dtype=torch.float32)
    rstd = torch.empty(R, device=x.device, dtype=torch.float32)
    _fwd_kernel[(R,)](x, y, x if weight is None else weight, x if bias is None else bias, mean, rstd,
                      x if lam_t is None else lam_t, x.stride(0), m, lam, eps, OP=op, CENTERED=centered, CTS=cts,
                      HAS_W=weight is not None, HAS_B=bias is not None, LAM_PTR=lam_t is not None,
                      BLOCK=triton.next_power_of_2(m))
    return y, mean, rstd


@rows_forward.register_fake
def _(x, weight, bias, lam_t, lam, op, centered, cts, eps):
    stat = x.new_empty(x.shape[0], dtype=torch.float32)
    return torch.empty_like(x), stat, torch.empty_like(stat)


@torch.library.custom_op("ibnorm::triton_rows_backward", mutates_args=())
def rows_backward(gy: Tensor, x: Tensor, weight: Optional[Tensor], mean: Tensor, rstd: Tensor,
                  lam_t: Optional[Tensor], lam: float, op: int, centered: bool, cts: bool,
                  eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(gx, dw, db, dlam)``: the affine and strength gradients summed over rows (float32)."""
    R, m = x.shape
    n_prog = min(R, 4 * (torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 2))
    rows_per_prog = (R + n_prog - 1) // n_prog
    gx = torch.empty_like(x)
    dw = torch.empty(n_prog, m, device=x.device, dtype=torch.float32)
    db = torch.empty(n_prog, m, device=x.device, dtype=torch.float32)
    dl = torch.empty(n_prog, device=x.device, dtype=torch.float32)
    _bwd_kernel[(n_prog,)](x, gy, gx, x if weight is None else weight, mean, rstd, dw, db, dl,
                           x if lam_t is None else lam_t, x.stride(0), m, R, rows_per_prog, lam, eps, OP=op,
                           CENTERED=centered, CTS=cts, HAS_W=weight is not None, LAM_PTR=lam_t is not None,
                           BLOCK=triton.next_power_of_2(m))
    return gx, dw.sum(0), db.sum(0), dl.sum()


@rows_backward.register_fake
def _(gy, x, weight, mean, rstd, lam_t, lam, op, centered, cts, eps):
    row = x.new_empty(x.shape[1], dtype=torch.float32)
    return torch.empty_like(x), row, torch.empty_like(row), x.new_empty((), dtype=torch.float32)


def _setup(ctx, inputs, output):
    x, weight, bias, lam_t, lam, op, centered, cts, eps = inputs
    ctx.save_for_backward(x, weight, lam_t, output[1], output[2])
    ctx.cfg = (lam, op, centered, cts, eps)


def _grad(ctx, gy, _gmean, _grstd):
    x, weight, lam_t, mean, rstd = ctx.saved_tensors
    lam, op, centered, cts, eps = ctx.cfg
    if torch.is_grad_enabled():  # create_graph=True: gradients that can be differentiated again
        from .higher_order import OP_BY_CODE, order_of, reference_grads
        need_dw, need_dl = weight is not None and ctx.needs_input_grad[1], lam_t is not None and ctx.needs_input_grad[3]
        gx, gw, gl = reference_grads(gy, x, weight, lam_t, lam, (-1,), centered, eps, OP_BY_CODE[op], order_of(cts),
                                     (x.shape[1],), need_dw, need_dl)
        gb = gy.sum(0).to(x.dtype) if ctx.needs_input_grad[2] else None
        return gx, gw, gb, gl, None, None, None, None, None
    gx, dw, db, dl = torch.ops.ibnorm.triton_rows_backward(gy.contiguous(), x, weight, mean, rstd, lam_t, lam, op,
                                                           centered, cts, eps)
    return (gx, dw.to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None,
            db.to(x.dtype) if ctx.needs_input_grad[2] else None,
            dl.to(lam_t.dtype) if lam_t is not None and ctx.needs_input_grad[3] else None, None, None, None, None, None)


rows_forward.register_autograd(_grad, setup_context=_setup)


def ib_rows(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], strength, m: int, centered: bool,
            eps: float, compression: str, cts: bool) -> Tensor:
    """Groups of the last ``m`` values of ``x``, with a per-element affine map of ``m`` values."""
    lam_t = strength if isinstance(strength, Tensor) else None
    lam = 1.0 if lam_t is not None or strength is None else float(strength)
    y, _, _ = torch.ops.ibnorm.triton_rows_forward(
        x.reshape(-1, m).contiguous(), None if weight is None else weight.reshape(-1),
        None if bias is None else bias.reshape(-1), lam_t, lam, get_compression(compression).code, centered, cts,
        float(eps))
    return y.reshape(x.shape)


MAX_ROW = 65536  # one row lives in registers (BLOCK >= M); wider rows take the autograd Function


def supports(x: Tensor, m: int) -> bool:
    return (HAVE_TRITON and x.is_cuda and x.dtype in (torch.float32, torch.bfloat16, torch.float16)
            and m <= MAX_ROW)
