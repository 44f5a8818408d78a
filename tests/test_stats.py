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


def test_claim_1_verdict_and_direction_on_constructed_cases():
    """Claim 1 is supported only when every op beats the base norm in every family, not supported when any op is
    worse, and otherwise inconclusive; the evidence names where the mean difference goes against IBNorm."""
    from ibnorm.lab import reproduce as R
    from ibnorm.lab import results as RS
    from ibnorm.lab.tasks import task_kind
    base = [1.0, 1.1, 1.2]

    def compared(model, shift, noise=(0.001, -0.001, 0.0)):  # shift > 0: IBNorm ahead in this family's metric
        sign = 1 if task_kind(model).higher_is_better else -1
        p = paired([b + sign * shift + e for b, e in zip(base, noise)], base)
        return p, p.verdict(task_kind(model).higher_is_better)

    def claim_1(main):
        row = next(line for line in RS.claims_section(main, {}, {}, {}, []) if line.startswith("| 1."))
        return row.split("**")[1], row

    every = [(m, op) for m in R.FAMILIES for op in R.IB_OPS]
    assert claim_1({k: compared(k[0], 0.05) for k in every})[0] == "supported"
    mixed = {k: compared(k[0], 0.05) for k in every}
    mixed[every[0]] = compared(every[0][0], -0.05)
    assert claim_1(mixed)[0] == "not supported"
    noisy = (0.02, -0.03, 0.0)
    unclear = {k: compared(k[0], 0.005, noisy) for k in every}
    unclear[every[1]] = compared(every[1][0], -0.005, noisy)
    verdict, row = claim_1(unclear)
    assert verdict == "inconclusive at this scale" and "0 better" in row and "0 worse" in row
    assert f"in IBNorm's favour in {len(every) - 1}, against it in 1 ({every[1][0]} {every[1][1]})" in row
    unclear[every[3]] = compared(every[3][0], 0.05)  # one op better in one family is not "consistently"
    assert claim_1(unclear)[0] == "inconclusive at this scale"
    del unclear[every[2]]
    assert claim_1(unclear)[0] == "pending"


def test_claim_5a_waits_for_every_order_comparison():
    """One op worse with standardize-then-compress is not yet a verdict while other comparisons are missing; one
    better is final."""
    from ibnorm.lab import reproduce as R
    from ibnorm.lab import results as RS
    base = [1.0, 1.1, 1.2]
    worse = paired([b + 0.03 for b in base], [b + e for b, e in zip(base, (0.001, -0.001, 0.0))])
    none = paired([b + e for b, e in zip(base, (0.02, -0.03, 0.0))], base)

    def claim_5a(abl):
        row = next(line for line in RS.claims_section({}, {}, {}, abl, []) if line.startswith("| 5a."))
        return row.split("**")[1]
    keys = [(m, f"{op}:order=standardize_then_compress") for m in R.ABLATION_MODELS for op in R.IB_OPS]
    abl = {keys[0]: (worse, "worse")}  # LM loss: higher is worse
    assert claim_5a(abl) == "pending"
    abl.update({k: (none, "no detectable difference") for k in keys[1:]})
    assert claim_5a(abl) == "supported"
    row = next(line for line in RS.claims_section({}, {}, {}, abl, []) if line.startswith("| 5a."))
    assert f"worse than compress-then-standardize in 1, better in 0, no detectable difference in {len(keys) - 1} of" in row
    mixed = {**abl, keys[1]: (worse, "better")}
    row = next(line for line in RS.claims_section({}, {}, {}, mixed, []) if line.startswith("| 5a."))
    assert f"in 1, better in 1, no detectable difference in {len(keys) - 2} of" in row
    abl[keys[0]] = (none, "no detectable difference")
    assert claim_5a(abl) == "inconclusive at this scale"
    assert claim_5a({keys[1]: (worse, "better")}) == "not supported"


def test_a_difference_below_the_tables_resolution_shows_its_size():
    """A consistent difference of 1e-6 is 'worse' by the rule; the table must not print it as +0.0000."""
    from ibnorm.lab import results as RS
    base = {0: 1.0, 1: 1.1, 2: 1.2}
    tiny = {s: v + 1e-6 + 1e-8 * s for s, v in base.items()}
    _, text, verdict = RS.versus(tiny, base, higher_is_better=False)
    assert verdict == "worse" and text.startswith("+1.0e-06 [") and "0.0000" not in text
    _, text, _ = RS.versus({s: v + 0.01 for s, v in base.items()}, base, higher_is_better=False)
    assert text.startswith("+0.0100 [")
