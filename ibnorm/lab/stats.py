"""Paired comparisons across seeds: the statistics behind every "better / worse / no detectable difference".

A norm is compared with its family's base norm seed by seed (same seed, same data order, same init of the shared
layers), so the unit is the per-seed difference ``d_s = metric(norm, s) - metric(base, s)``. Its mean gets a
Student-t interval with ``n - 1`` degrees of freedom. The verdict rule is fixed in advance: "better" or "worse"
only when the 95% interval excludes 0, in the direction the metric prefers; otherwise "no detectable difference".
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Optional, Sequence


@dataclass(frozen=True)
class Paired:
    """The paired difference of a norm to its base norm over seeds."""

    n: int
    mean: float
    sd: float
    low: float  # the confidence interval of the mean difference
    high: float
    confidence: float

    def verdict(self, higher_is_better: bool) -> str:
        if self.n < 2 or not math.isfinite(self.low):
            return "not enough seeds"
        if self.low > 0 or self.high < 0:
            return "better" if (self.low > 0) == higher_is_better else "worse"
        return "no detectable difference"


def paired(values: Sequence[float], base: Sequence[float], confidence: float = 0.95) -> Paired:
    """The mean of ``values[i] - base[i]`` with a two-sided Student-t interval (needs two or more pairs)."""
    if len(values) != len(base):
        raise ValueError(f"values and base must pair up seed by seed; got {len(values)} and {len(base)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    d = [a - b for a, b in zip(values, base)]
    n = len(d)
    if n == 0:
        raise ValueError("values must hold at least one pair")
    mean = statistics.fmean(d)
    if n < 2:
        return Paired(n, mean, math.nan, -math.inf, math.inf, confidence)
    sd = statistics.stdev(d)
    half = t_quantile(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return Paired(n, mean, sd, mean - half, mean + half, confidence)


def t_p_value(p: Paired) -> float:
    """The two-sided p-value of the paired t-test of ``p`` (mean difference 0); NaN with fewer than 2 pairs."""
    if p.n < 2 or not math.isfinite(p.sd):
        return math.nan
    if p.sd == 0:
        return 0.0 if p.mean != 0 else 1.0
    t = abs(p.mean) / (p.sd / math.sqrt(p.n))
    return min(1.0, 2.0 * (1.0 - _t_cdf(t, p.n - 1)))


def holm(p_values: dict) -> dict:
    """Holm's step-down adjustment of a family of p-values (key -> p): the family-wise error stays at alpha. NaN
    entries stay NaN and do not count in the family."""
    keys = sorted((k for k, v in p_values.items() if not math.isnan(v)), key=lambda k: p_values[k])
    m, out, running = len(keys), {k: math.nan for k in p_values}, 0.0
    for i, k in enumerate(keys):
        running = max(running, min(1.0, (m - i) * p_values[k]))
        out[k] = running
    return out


def min_detectable(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean difference a two-sided paired t-test at ``alpha`` detects with probability ``power``
    from ``n`` pairs whose differences have standard deviation ``sd``: (t_{1-alpha/2} + t_{power}) * sd / sqrt(n),
    both quantiles with n - 1 degrees of freedom (the usual approximation of the noncentral t)."""
    if n < 2 or not math.isfinite(sd):
        return math.inf
    return (t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)) * sd / math.sqrt(n)


def seeds_needed(effect: float, sd: float, alpha: float = 0.05, power: float = 0.8, most: int = 1000) -> Optional[int]:
    """The fewest pairs for which :func:`min_detectable` reaches ``effect`` (None: more than ``most``)."""
    if sd == 0:
        return 2
    for n in range(2, most + 1):
        if min_detectable(sd, n, alpha, power) <= abs(effect):
            return n
    return None


def equivalent(p: Paired, bound: float) -> bool:
    """TOST at level 0.05: the 90% interval of the mean difference lies inside (-bound, +bound). ``p`` must carry a
    90% interval (``paired(..., confidence=0.9)``)."""
    if abs(p.confidence - 0.9) > 1e-12:
        raise ValueError(f"p must carry a 90% interval for TOST at 0.05; got confidence {p.confidence}")
    return math.isfinite(p.low) and -bound < p.low and p.high < bound


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on the exact CDF)."""
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        if _t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _t_cdf(t: float, df: int) -> float:
    """Student's t CDF through the regularized incomplete beta function I_x(df/2, 1/2), x = df / (df + t^2)."""
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, x)
    return 1.0 - tail if t > 0 else tail


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function by its continued fraction (Numerical Recipes' betacf)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x > (a + 1.0) / (a + b + 2.0):  # the continued fraction converges fast on this side only
        return 1.0 - _betainc(b, a, 1.0 - x)
    f, c, d = 1.0, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > 1e-300 else 1e-300)
    f = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > 1e-300 else 1e-300)
            c = 1.0 + num / c
            c = c if abs(c) > 1e-300 else 1e-300
            f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * f / a
