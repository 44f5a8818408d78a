"""Paired intervals against scipy, and the verdict rule on constructed cases."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from ibnorm.lab.stats import paired, t_quantile


@pytest.mark.parametrize("df", [1, 2, 4, 9, 30])
@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.995])
def test_t_quantile_matches_scipy(df, p):
    assert t_quantile(p, df) == pytest.approx(sps.t.ppf(p, df), rel=1e-8, abs=1e-9)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_paired_interval_matches_scipy(seed, n):
    rng = np.random.default_rng(seed)
    base = rng.normal(0.8, 0.05, n)
    values = base + rng.normal(0.01, 0.02, n)
    got = paired(list(values), list(base))
    d = values - base
    low, high = sps.t.interval(0.95, n - 1, loc=d.mean(), scale=sps.sem(d))
    assert got.mean == pytest.approx(d.mean()) and got.sd == pytest.approx(d.std(ddof=1))
    assert (got.low, got.high) == (pytest.approx(low, rel=1e-9, abs=1e-12), pytest.approx(high, rel=1e-9, abs=1e-12))


def test_verdict_rule_on_constructed_cases():
    # accuracy (higher is better): an interval above 0 is better, below 0 worse, across 0 no detectable difference
    base = [0.80, 0.81, 0.82, 0.83, 0.84]
    up = paired([b + 0.02 + e for b, e in zip(base, (0.001, -0.001, 0.002, 0.0, -0.002))], base)
    assert up.low > 0 and up.verdict(higher_is_better=True) == "better" and up.verdict(False) == "worse"
    down = paired([b - 0.02 + e for b, e in zip(base, (0.001, -0.001, 0.002, 0.0, -0.002))], base)
    assert down.verdict(True) == "worse" and down.verdict(False) == "better"
    noisy = paired([b + e for b, e in zip(base, (0.02, -0.02, 0.01, -0.01, 0.0))], base)
    assert noisy.low < 0 < noisy.high and noisy.verdict(True) == "no detectable difference"
    one = paired([0.9], [0.8])
    assert one.verdict(True) == "not enough seeds" and math.isnan(one.sd)
    with pytest.raises(ValueError, match="pair up"):
        paired([1.0, 2.0], [1.0])
