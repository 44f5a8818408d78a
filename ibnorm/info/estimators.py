"""Mutual-information estimators, in nats, behind one function :func:`mutual_information`.

- ``"ksg"``: Kraskov, Stoegbauer & Grassberger (2004): k nearest neighbours in the joint space under
  the max-norm (KD-tree), after scaling every column to unit variance. ``variant=2`` (default): marginal
  extents ``eps_x, eps_y`` of the k-NN box, ``I = psi(k) - 1/k + psi(n) - <psi(n_x) + psi(n_y)>``;
  ``variant=1``: one radius, ``I = psi(k) + psi(n) - <psi(n_x + 1) + psi(n_y + 1)>``. Like every kNN
  estimator it underestimates large MI in many dimensions: on correlated Gaussians (n = 2000, k = 3)
  the bias is about 0.01 nats for d <= 2 but -0.08 / -0.19 / -0.60 nats at d = 4 and rho = 0.5 / 0.7 /
  0.9 (``results/info/estimator_validation.md``).
  With integer (or boolean) labels ``y`` it switches to the discrete-continuous form of Ross (2014):
  ``I = psi(n) - <psi(n_y)> + psi(k) - <psi(m)>``.

  Repeated rows: KSG estimates the MI of continuous variables, where a sample never repeats; a repeated
  (x, y) row puts its neighbours at distance zero and drives the estimate toward infinity (every row
  repeated 5x: 6.1 nats where the answer is 0.35). The rule: repeated rows count once. KSG runs on the
  distinct (x, y) rows (x and the label, for labels), with a warning that says how many were dropped.

  ``bias_correction="gaussian"`` subtracts the bias KSG has on a Gaussian with the data's copula. Each
  column goes to normal scores ``Phi^-1(rank / (n + 1))`` (MI is invariant to monotone per-column maps,
  so nothing is lost) and ``R`` is the correlation of the joint scores. ``surrogates`` Gaussian samples
  of the same size are drawn from ``R``; on each, KSG's error is measured against that sample's own
  plug-in Gaussian MI ``(log det R_xx + log det R_yy - log det R) / 2`` (a control variate: the
  surrogate's sampling noise largely cancels), and ``I = KSG(scores) - mean error``. This is a
  parametric-bootstrap bias correction. On Gaussian data it leaves a bias of about 0.01 nats up to d = 4,
  rho = 0.9. It does nothing for biases a Gaussian does not have: at the sharp edges of uniform noise
  it is as biased as plain KSG. At high MI its spread is 1.1-1.3x the floor for any estimator at this
  n, which is the spread of the parametric MI from the sample correlation: 0.04 nats at d = 4,
  rho = 0.9, so there no estimator lands within 0.05 nats on every draw. At low MI the spread is
  KSG's own kNN noise (~0.02 nats), as for plain KSG. It needs continuous ``y`` and a non-singular
  ``R``: fewer dimensions than samples and no exact linear relations. The recorder's wide layers do
  not qualify.
- ``"renyi"``: the matrix-based Renyi alpha-order entropy of Giraldo, Rao & Principe (2014). Gaussian
  Gram matrix ``K_ij = exp(-|t_i - t_j|^2 / (2 sigma^2))``, normalized ``A = K / tr(K)``,
  ``S_alpha(A) = log(sum_i lambda_i(A)^alpha) / (1 - alpha)``; joint ``A_xy = A_x * A_y / tr(A_x * A_y)``
  (Hadamard product); ``I = S(A_x) + S(A_y) - S(A_xy)``. Defaults: ``alpha = 1.01`` (close to
  Shannon, as information-plane studies use), ``sigma = width_scale * median pairwise distance``
  (``width_scale = 1``). Integer labels use the indicator kernel ``K_ij = [y_i == y_j]``. Cost is
  ``O(n^2 d + n^3)``: it depends on the number of samples, not the width of the layer.
- ``"binning"``: equal-width bins per dimension (``bins = 30`` between each column's min and max),
  each sample's bin tuple a symbol, plug-in ``I = H(X) + H(Y) - H(X, Y)`` as in Shwartz-Ziv & Tishby
  (2017). Strongly biased in more than a few dimensions (it warns above 2): kept because it is the classic
  reference.
"""
from __future__ import annotations

import warnings
from typing import Any, Optional

import numpy as np
from scipy.spatial import cKDTree
from scipy.special import digamma
from scipy.stats import norm, rankdata

METHODS = ("ksg", "renyi", "binning")
BIAS_CORRECTIONS = ("none", "gaussian")


def _as_array(a: Any, name: str) -> np.ndarray:
    try:
        import torch
        if isinstance(a, torch.Tensor):
            a = a.detach().cpu().double().numpy() if a.is_floating_point() else a.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    a = np.asarray(a)
    if a.dtype.kind == "b":  # boolean labels are two classes
        a = a.astype(np.int64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name} must have shape [n] or [n, d]; got shape {a.shape}")
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be numeric; got dtype {a.dtype}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite; it has {int((~np.isfinite(a)).sum())} non-finite values")
    return a


def _is_discrete(y: np.ndarray) -> bool:
    return y.shape[1] == 1 and y.dtype.kind in "biu"


def _validate(x: Any, y: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_array(x, "x"), _as_array(y, "y")
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same number of samples; got {len(x)} and {len(y)}")
    if len(x) < max(2 * k, 10):
        raise ValueError(f"x and y need at least {max(2 * k, 10)} samples; got {len(x)}")
    return x, y


def _jitter(a: np.ndarray, seed: int) -> np.ndarray:
    """Each column scaled to unit standard deviation (so the max-norm weighs dimensions alike and the
    estimate is invariant to per-dimension rescaling), plus tiny noise that breaks ties (kNN estimators
    assume continuous data), deterministic under ``seed``."""
    a = a.astype(np.float64)
    std = a.std(axis=0)
    a = (a - a.mean(axis=0)) / np.where(std > 0, std, 1.0)
    scale = 1e-10 * (np.abs(a).mean() + 1e-12)
    return a + scale * np.random.default_rng(seed).standard_normal(a.shape)


def ksg(x: np.ndarray, y: np.ndarray, k: int = 3, seed: int = 0, variant: int = 2,
        bias_correction: str = "none", surrogates: int = 8) -> float:
    if variant not in (1, 2):
        raise ValueError(f"variant must be 1 or 2; got {variant}")
    if bias_correction not in BIAS_CORRECTIONS:
        raise ValueError(f"bias_correction must be one of {BIAS_CORRECTIONS}; got {bias_correction!r}")
    if _is_discrete(y):
        if bias_correction != "none":
            raise ValueError("bias_correction='gaussian' needs continuous y; integer labels use the discrete form")
        return _ksg_discrete(_jitter(x, seed), y[:, 0], k)
    if bias_correction == "gaussian":
        return _ksg_gaussian_corrected(x, y, k, seed, variant, surrogates)
    return max(_ksg_raw(_jitter(x, seed), _jitter(y, seed + 1), k, variant), 0.0)


def _ksg_raw(x: np.ndarray, y: np.ndarray, k: int, variant: int) -> float:
    """KSG on prepared (scaled, tie-free) columns; not clipped at zero."""
    n = len(x)
    joint = np.hstack([x, y])
    dist, idx = cKDTree(joint).query(joint, k=k + 1, p=np.inf, workers=-1)
    if variant == 1:
        radius = np.nextafter(dist[:, -1], 0)  # strictly closer than the k-th neighbour
        nx = cKDTree(x).query_ball_point(x, radius, p=np.inf, return_length=True, workers=-1)  # includes the point
        ny = cKDTree(y).query_ball_point(y, radius, p=np.inf, return_length=True, workers=-1)
        return float(digamma(k) + digamma(n) - np.mean(digamma(nx) + digamma(ny)))
    nb = idx[:, 1:]
    eps_x = np.abs(x[nb] - x[:, None, :]).max(axis=(1, 2))
    eps_y = np.abs(y[nb] - y[:, None, :]).max(axis=(1, 2))
    nx = cKDTree(x).query_ball_point(x, eps_x, p=np.inf, return_length=True, workers=-1) - 1  # within eps_x, not i
    ny = cKDTree(y).query_ball_point(y, eps_y, p=np.inf, return_length=True, workers=-1) - 1
    return float(digamma(k) - 1.0 / k + digamma(n) - np.mean(digamma(nx) + digamma(ny)))


def normal_scores(a: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each column mapped to ``Phi^-1(rank / (n + 1))`` (ties broken by :func:`_jitter`'s noise)."""
    ranks = rankdata(_jitter(a, seed), axis=0)
    return norm.ppf(ranks / (len(a) + 1))


def gaussian_mi(corr: np.ndarray, dx: int) -> float:
    """MI in nats between the first ``dx`` and the remaining coordinates of a Gaussian with correlation ``corr``."""
    logdet = lambda m: np.linalg.slogdet(m)[1]  # noqa: E731
    return float(0.5 * (logdet(corr[:dx, :dx]) + logdet(corr[dx:, dx:]) - logdet(corr)))


def _ksg_gaussian_corrected(x: np.ndarray, y: np.ndarray, k: int, seed: int, variant: int, surrogates: int) -> float:
    if surrogates < 1:
        raise ValueError(f"surrogates must be >= 1; got {surrogates}")
    n, dx = len(x), x.shape[1]
    sx, sy = normal_scores(x, seed), normal_scores(y, seed + 1)
    corr = np.corrcoef(np.hstack([sx, sy]), rowvar=False)
    if np.linalg.eigvalsh(corr).min() < 1e-8:
        raise ValueError(
            f"bias_correction='gaussian' needs a non-singular joint correlation of x and y ({dx} + {y.shape[1]} "
            f"dimensions, n = {n}): remove constant or linearly dependent columns, or use bias_correction='none'")
    chol = np.linalg.cholesky(corr)
    rng = np.random.default_rng(seed + 2)
    bias = []
    for _ in range(surrogates):
        z = rng.standard_normal((n, corr.shape[0])) @ chol.T
        zx, zy = normal_scores(z[:, :dx], seed), normal_scores(z[:, dx:], seed + 1)
        # KSG's error against the surrogate's own plug-in Gaussian MI (a control variate): most of a
        # surrogate's KSG noise is its sample correlation, which the plug-in follows, so it cancels here.
        z_corr = np.corrcoef(np.hstack([zx, zy]), rowvar=False)
        bias.append(_ksg_raw(zx, zy, k, variant) - gaussian_mi(z_corr, dx))
    return max(_ksg_raw(sx, sy, k, variant) - float(np.mean(bias)), 0.0)


def _ksg_discrete(x: np.ndarray, labels: np.ndarray, k: int) -> float:
    n = len(x)
    radius = np.empty(n)
    label_count = np.empty(n)
    k_used = np.empty(n)
    for lab in np.unique(labels):
        mask = labels == lab
        count = int(mask.sum())
        label_count[mask] = count
        if count < 2:
            radius[mask], k_used[mask] = 0.0, 0
            continue
        kk = min(k, count - 1)
        d, _ = cKDTree(x[mask]).query(x[mask], k=kk + 1, p=np.inf, workers=-1)
        radius[mask], k_used[mask] = np.nextafter(d[:, -1], 0), kk
    keep = k_used > 0
    if not keep.any():
        return 0.0
    m = cKDTree(x).query_ball_point(x[keep], radius[keep], p=np.inf, return_length=True, workers=-1)
    mi = digamma(keep.sum()) - np.mean(digamma(label_count[keep])) + np.mean(digamma(k_used[keep])) - np.mean(digamma(m))
    return float(max(mi, 0.0))


def _gram(a: np.ndarray, width_scale: float, sigma: Optional[float]) -> np.ndarray:
    if _is_discrete(a):
        return (a[:, 0][:, None] == a[:, 0][None, :]).astype(np.float64)
    a = a.astype(np.float64)
    sq = np.sum(a * a, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * a @ a.T, 0.0)
    if sigma is None:
        off = np.sqrt(d2[np.triu_indices(len(a), 1)])
        med = np.median(off[off > 0]) if (off > 0).any() else 1.0
        sigma = width_scale * med
    return np.exp(-d2 / (2 * sigma * sigma))


def _renyi_entropy(gram: np.ndarray, alpha: float) -> float:
    a = gram / np.trace(gram)
    lam = np.clip(np.linalg.eigvalsh(a), 0.0, None)
    if abs(alpha - 1.0) < 1e-9:
        nz = lam[lam > 0]
        return float(-(nz * np.log(nz)).sum())
    return float(np.log(np.sum(lam ** alpha)) / (1 - alpha))


def renyi(x: np.ndarray, y: np.ndarray, alpha: float = 1.01, width_scale: float = 1.0,
          sigma_x: Optional[float] = None, sigma_y: Optional[float] = None) -> float:
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0; got {alpha}")
    kx, ky = _gram(x, width_scale, sigma_x), _gram(y, width_scale, sigma_y)
    return float(max(_renyi_entropy(kx, alpha) + _renyi_entropy(ky, alpha) - _renyi_entropy(kx * ky, alpha), 0.0))


def _symbols(a: np.ndarray, bins: int) -> np.ndarray:
    if _is_discrete(a):
        return np.unique(a[:, 0], return_inverse=True)[1]
    lo, hi = a.min(axis=0), a.max(axis=0)
    width = np.where(hi > lo, (hi - lo) / bins, 1.0)
    idx = np.clip(((a - lo) / width).astype(np.int64), 0, bins - 1)
    return np.unique(idx, axis=0, return_inverse=True)[1].reshape(-1)


def _entropy(symbols: np.ndarray) -> float:
    p = np.bincount(symbols) / len(symbols)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def _distinct_rows(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (x, y) rows, in their first order, with a warning when some repeated (see the module's rule)."""
    joint = np.hstack([x.astype(np.float64), y.astype(np.float64)])
    _, first = np.unique(joint, axis=0, return_index=True)
    if len(first) == len(x):
        return x, y
    keep = np.sort(first)
    warnings.warn(f"x and y hold {len(x) - len(keep)} repeated rows of {len(x)}: KSG assumes continuous data, where "
                  f"rows never repeat, so it counts each distinct row once ({len(keep)} rows)", stacklevel=3)
    if len(keep) < 10:
        raise ValueError(f"x and y have {len(keep)} distinct rows; KSG needs at least 10")
    return x[keep], y[keep]


def binning(x: np.ndarray, y: np.ndarray, bins: int = 30) -> float:
    if bins < 2:
        raise ValueError(f"bins must be >= 2; got {bins}")
    for name, a in (("x", x), ("y", y)):
        if a.shape[1] > 2 and not _is_discrete(a):
            warnings.warn(f"binning {name} in {a.shape[1]} dimensions: with {bins} bins each, almost every sample "
                          "lands in a bin of its own, so the plug-in MI approaches H(X) whatever the dependence; "
                          "use method='ksg' above 2 dimensions", stacklevel=3)
    sx, sy = _symbols(x, bins), _symbols(y, bins)
    joint = np.unique(np.stack([sx, sy], 1), axis=0, return_inverse=True)[1].reshape(-1)
    return max(_entropy(sx) + _entropy(sy) - _entropy(joint), 0.0)


def mutual_information(x: Any, y: Any, method: str = "ksg", **kwargs: Any) -> float:
    """I(x; y) in nats. ``x``, ``y``: arrays or tensors ``[n]`` or ``[n, d]``; integer ``y`` = class labels.

    Options: ``ksg``: ``k=3``, ``seed=0`` (tie-breaking jitter and surrogates), ``variant=2``,
    ``bias_correction="none"`` or ``"gaussian"``, ``surrogates=8``; ``renyi``: ``alpha=1.01``, ``width_scale=1.0``,
    ``sigma_x``, ``sigma_y``; ``binning``: ``bins=30``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    k = int(kwargs.get("k", 3))
    if method == "ksg" and k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    x, y = _validate(x, y, k)
    if y.dtype.kind == "f" and y.shape[1] == 1 and np.all(y == np.round(y)) and len(np.unique(y)) <= min(50, len(y) // 10):
        warnings.warn("y holds a few whole numbers in a float array: class labels? They are treated as continuous; "
                      "pass them as integers (y.astype(int)) to use the discrete-label estimators", stacklevel=2)
    if np.ptp(x, axis=0).max() == 0 or np.ptp(y, axis=0).max() == 0:
        return 0.0  # a constant carries no information (and would give KSG's jitter something to find)
    if method == "ksg":
        x, y = _distinct_rows(x, y)
        return ksg(x, y, **kwargs)
    if method == "renyi":
        return renyi(x, y, **kwargs)
    return binning(x, y, **kwargs)
