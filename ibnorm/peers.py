"""Peers IBNorm is compared against: NormalNorm and Dynamic Tanh.

NormalNorm (Eftekhari & Papyan, "On the Importance of Gaussianizing Representations", ICML 2025),
per group:

1. standardize ``h = (x - mean) / sqrt(var + eps)``;
2. estimate the Yeo-Johnson ``lambda`` by one Newton step from ``lambda = 1`` on the per-sample
   Gaussian negative log-likelihood of the transformed group
   ``f(lam) = 0.5 * log var(psi(h; lam)) - (lam - 1) * mean(sign(h) * log1p(|h|))``:
   ``lam = 1 - f'(1) / f''(1)`` (closed forms below; gradients flow through the estimate);
3. apply ``psi(h; lam)``;
4. in training add ``noise_train * MAD(psi) * N(0, 1)`` noise, MAD = mean absolute deviation of the
   group (no gradient);
5. affine recovery.

Two guards keep the Newton step usable on small or odd groups, documented here because the paper's
text does not state them: ``f''(1)`` is floored at ``NEWTON_MIN_CURVATURE`` and the estimate is clipped
to ``[0, 2]`` (where both Yeo-Johnson branches stay finite and monotone).

Dynamic Tanh (Zhu et al., "Transformers without Normalization", CVPR 2025):
``weight * tanh(alpha * x) + bias`` with a learnable scalar ``alpha`` (init 0.5).
"""
from __future__ import annotations

import numbers
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .reference import check_batch_count, check_trailing, compute_dtype
from .layers import SettingsInState, _check_eps, _check_positive_int, _shape_t, _to_shape, reset_affine

NEWTON_MIN_CURVATURE = 1e-2
_SMALL = 1e-6


def _expm1_ratio(t: Tensor, log_base: Tensor) -> Tensor:
    """``expm1(t * L) / t`` with its limit ``L`` at ``t = 0`` (and a finite gradient)."""
    small = t.abs() < _SMALL
    t_safe = torch.where(small, torch.full_like(t, _SMALL), t)
    return torch.where(small, log_base, torch.expm1(t_safe * log_base) / t_safe)


def yeo_johnson(h: Tensor, lam: Tensor) -> Tensor:
    """The Yeo-Johnson transform ``psi(h; lam)`` (``lam`` broadcasts against ``h``)."""
    pos = h >= 0
    a_pos = h.clamp(min=0)
    a_neg = (-h).clamp(min=0)
    return torch.where(pos, _expm1_ratio(lam, torch.log1p(a_pos)), -_expm1_ratio(2 - lam, torch.log1p(a_neg)))


def yeo_johnson_newton_lambda(h: Tensor, dims: Sequence[int]) -> Tensor:
    """One Newton step from ``lam = 1`` on the Gaussian NLL of ``psi(h; lam)`` per group.

    At ``lam = 1``, ``psi = h``; with ``a = |h|`` and ``L = log1p(a)`` the lambda-derivatives are
    ``psi' = (1 + a) L - a`` (even in h) and ``psi'' = sign(h) ((1 + a) L^2 - 2 (1 + a) L + 2 a``) (odd).
    With ``v = var(psi)``: ``v' = 2 cov(h, psi')``, ``v'' = 2 (var(psi') + cov(h, psi''))``, so
    ``f' = v' / (2 v) - mean(sign(h) L)`` and ``f'' = (v'' / v - (v' / v)^2) / 2``.
    """
    dims = tuple(dims)
    a = h.abs()
    L = torch.log1p(a)
    sgn = torch.sign(h)
    d1 = (1 + a) * L - a
    d2 = sgn * ((1 + a) * L * L - 2 * (1 + a) * L + 2 * a)

    def mean(t: Tensor) -> Tensor:
        return t.mean(dim=dims, keepdim=True)

    hc = h - mean(h)
    v = mean(hc * hc).clamp_min(_SMALL)
    dv = 2 * mean(hc * d1)
    d1c = d1 - mean(d1)
    ddv = 2 * (mean(d1c * d1c) + mean(hc * d2))
    f1 = 0.5 * dv / v - mean(sgn * L)
    f2 = (0.5 * (ddv / v - (dv / v) ** 2)).clamp_min(NEWTON_MIN_CURVATURE)
    return (1 - f1 / f2).clamp(0.0, 2.0)


def normal_norm(h: Tensor, dims: Sequence[int], lam: Optional[Tensor], noise_train: float, training: bool) -> tuple[Tensor, Tensor]:
    """Steps 2-4 on standardized ``h``; ``lam=None`` estimates it. Returns (output, lam)."""
    if lam is None:
        lam = yeo_johnson_newton_lambda(h, dims)
    y = yeo_johnson(h, lam)
    if training and noise_train > 0:
        with torch.no_grad():
            mad = (y - y.mean(dim=tuple(dims), keepdim=True)).abs().mean(dim=tuple(dims), keepdim=True)
            noise = torch.randn_like(y) * mad * noise_train
        y = y + noise
    return y, lam


def _check_noise(noise_train: float) -> float:
    if isinstance(noise_train, bool) or not isinstance(noise_train, numbers.Real) or noise_train < 0:
        raise ValueError(f"noise_train must be a float >= 0; got {noise_train!r}")
    return float(noise_train)


class _NoiseSetting(SettingsInState):
    def layer_settings(self) -> dict:
        return {"noise_train": self.noise_train}


class LayerNormalNorm(_NoiseSetting, nn.Module):
    """NormalNorm with LayerNorm's grouping and signature (plus ``noise_train``, default 1.0)."""

    def __init__(self, normalized_shape: _shape_t, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, device=None, dtype=None, *, noise_train: float = 1.0) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.normalized_shape = _to_shape(normalized_shape)
        self.eps = _check_eps(eps)
        self.elementwise_affine = elementwise_affine
        self.noise_train = _check_noise(noise_train)
        self._register_settings()
        self.weight = nn.Parameter(torch.empty(self.normalized_shape, **factory)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.empty(self.normalized_shape, **factory)) if elementwise_affine and bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        reset_affine(self)

    def forward(self, input: Tensor) -> Tensor:
        shape = self.normalized_shape
        check_trailing(input, shape)
        dims = tuple(range(input.dim() - len(shape), input.dim()))
        x = input.to(compute_dtype(input.dtype))
        var, mean = torch.var_mean(x, dim=dims, correction=0, keepdim=True)
        h = (x - mean) * torch.rsqrt(var + self.eps)
        y, _ = normal_norm(h, dims, None, self.noise_train, self.training)
        if self.weight is not None:
            y = y * self.weight.to(y.dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(input.dtype)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, noise_train={self.noise_train}"


class _BatchNormalNorm(_NoiseSetting, nn.Module):
    """NormalNorm with BatchNorm's grouping: per channel over batch and spatial dims.

    Running averages (momentum, unbiased variance, as ``nn.BatchNorm``) of the mean and variance of
    ``x`` and of the estimated ``lambda`` replace the batch's in eval. ``noise_train`` defaults to 0.4.
    """

    _expected_dims: tuple[int, ...] = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None, *, noise_train: float = 0.4) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_features = _check_positive_int("num_features", num_features)
        self.eps = _check_eps(eps)
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.noise_train = _check_noise(noise_train)
        self._register_settings()
        self.weight = nn.Parameter(torch.empty(num_features, **factory)) if affine else None
        self.bias = nn.Parameter(torch.empty(num_features, **factory)) if affine else None
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer("running_lambda", torch.ones(num_features, **factory))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            for name in ("running_mean", "running_var", "running_lambda", "num_batches_tracked"):
                self.register_buffer(name, None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.running_lambda.fill_(1)
            self.num_batches_tracked.zero_()
        reset_affine(self)

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() not in self._expected_dims or input.shape[1] != self.num_features:
            want = " or ".join(f"{d}D" for d in self._expected_dims)
            raise ValueError(f"input must be {want} with {self.num_features} channels; got shape {list(input.shape)}")
        dims = (0,) + tuple(range(2, input.dim()))
        view = [1, self.num_features] + [1] * (input.dim() - 2)
        x = input.to(compute_dtype(input.dtype))
        use_batch = self.training or not self.track_running_stats
        if self.training:  # as nn.BatchNorm: a batch of one value per channel has no variance to normalize by
            check_batch_count(x.numel() // self.num_features, input)
        if use_batch:
            var, mean = torch.var_mean(x, dim=dims, correction=0, keepdim=True)
            h = (x - mean) * torch.rsqrt(var + self.eps)
            y, lam = normal_norm(h, dims, None, self.noise_train, self.training)
            if self.training and self.track_running_stats:
                self.num_batches_tracked.add_(1)
                f = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                n = x.numel() // self.num_features
                with torch.no_grad():  # an empty batch counts, as in nn.BatchNorm, but has no statistics to add
                    for buf, new in () if n == 0 else ((self.running_mean, mean), (self.running_var, var * n / max(n - 1, 1)),
                                     (self.running_lambda, lam)):
                        buf.mul_(1 - f).add_(new.detach().reshape(-1).to(buf.dtype), alpha=f)
        else:
            mean = self.running_mean.to(x.dtype).reshape(view)
            var = self.running_var.to(x.dtype).reshape(view)
            h = (x - mean) * torch.rsqrt(var + self.eps)
            y, _ = normal_norm(h, dims, self.running_lambda.to(x.dtype).reshape(view), 0.0, False)
        if self.affine:
            y = y * self.weight.to(y.dtype).reshape(view) + self.bias.to(y.dtype).reshape(view)
        return y.to(input.dtype)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}, noise_train={self.noise_train}")


class BatchNormalNorm1d(_BatchNormalNorm):
    _expected_dims = (2, 3)


class BatchNormalNorm2d(_BatchNormalNorm):
    _expected_dims = (4,)


class DynamicTanh(SettingsInState, nn.Module):
    """Dynamic Tanh: ``weight * tanh(alpha * x) + bias``, ``alpha`` a learnable scalar.

    ``channels_last=True`` applies ``weight``/``bias`` over the last dims (transformers);
    ``channels_last=False`` over dim 1 (``(N, C, *)`` conv features; ``normalized_shape`` = C).
    """

    def __init__(self, normalized_shape: _shape_t, alpha_init: float = 0.5, channels_last: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.normalized_shape = _to_shape(normalized_shape)
        if not channels_last and len(self.normalized_shape) != 1:
            raise ValueError(f"normalized_shape must be the channel count (one int) when channels_last=False; got {normalized_shape!r}")
        if isinstance(alpha_init, bool) or not isinstance(alpha_init, numbers.Real):
            raise TypeError(f"alpha_init must be a float; got {type(alpha_init).__name__}")
        self.alpha_init = float(alpha_init)
        self.channels_last = channels_last
        self._register_settings()
        self._scalar_parameters(factory)
        self.weight = nn.Parameter(torch.empty(self.normalized_shape, **factory))
        self.bias = nn.Parameter(torch.empty(self.normalized_shape, **factory))
        self.reset_parameters()

    def _scalar_parameters(self, factory: dict) -> None:
        self.alpha = nn.Parameter(torch.empty(1, **factory))

    def layer_settings(self) -> dict:
        return {"channels_last": self.channels_last}

    def reset_parameters(self) -> None:
        nn.init.constant_(self.alpha, self.alpha_init)
        reset_affine(self)

    def pointwise(self, input: Tensor) -> Tensor:
        return torch.tanh(self.alpha * input)

    def forward(self, input: Tensor) -> Tensor:
        y = self.pointwise(input)
        if self.channels_last:
            if tuple(input.shape[-len(self.normalized_shape):]) != self.normalized_shape:
                raise ValueError(f"input must end with normalized_shape {list(self.normalized_shape)}; got {list(input.shape)}")
            return y * self.weight + self.bias
        if input.dim() < 2 or input.shape[1] != self.normalized_shape[0]:
            raise ValueError(f"input must have shape (N, {self.normalized_shape[0]}, *); got {list(input.shape)}")
        view = [1, -1] + [1] * (input.dim() - 2)
        return y * self.weight.reshape(view) + self.bias.reshape(view)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, alpha_init={self.alpha_init}, channels_last={self.channels_last}"


class DynamicErf(DynamicTanh):
    """Dynamic erf (Derf): ``weight * erf(alpha * x + shift) + bias``, ``alpha`` and ``shift`` learnable scalars.

    Chen, Lu, Zhu, Sun & Liu, "Stronger Normalization-Free Transformers" (arXiv 2512.10938): DyT with erf for
    tanh and a learnable scalar shift inside it. Their initialization: ``alpha = 0.5``, ``shift = 0``, weight 1,
    bias 0 (their code and paper; the shift is one scalar, a per-channel shift gave them nothing more).
    ``channels_last`` as in :class:`DynamicTanh`.
    """

    def _scalar_parameters(self, factory: dict) -> None:
        super()._scalar_parameters(factory)
        self.shift = nn.Parameter(torch.zeros(1, **factory))

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.zeros_(self.shift)

    def pointwise(self, input: Tensor) -> Tensor:
        return torch.erf(self.alpha * input + self.shift)


PEERS = (LayerNormalNorm, BatchNormalNorm1d, BatchNormalNorm2d, DynamicTanh, DynamicErf)
