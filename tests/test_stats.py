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
    """Claim 1 ("consistently outperforms"): supported only when every comparison is better, not supported when any
    is worse or equivalent, otherwise inconclusive; the main table's verdict is provisional (exploratory) and the
    confirmatory test's, once in, decides. The evidence names where the mean difference goes against IBNorm."""
    from ibnorm.lab import reproduce as R
    from ibnorm.lab import results as RS
    from ibnorm.lab.tasks import task_kind
    base = [1.0, 1.1, 1.2]

    def compared(model, shift, verdict, noise=(0.001, -0.001, 0.0)):  # shift > 0: IBNorm ahead in the metric
        sign = 1 if task_kind(model).higher_is_better else -1
        return paired([b + sign * shift + e for b, e in zip(base, noise)], base), verdict

    def claim_1(main, confirm=None):
        row = next(line for line in RS.claims_section(main, {}, {}, {}, [], confirm=confirm) if line.startswith("| 1."))
        return row.split("**")[1], row

    every = [(m, op) for m in R.FAMILIES for op in R.IB_OPS]
    assert claim_1({k: compared(k[0], 0.05, "better") for k in every})[0] == \
        "supported (exploratory; the confirmatory test decides)"
    mixed = {k: compared(k[0], 0.05, "better") for k in every}
    mixed[every[0]] = compared(every[0][0], -0.05, "worse")
    assert claim_1(mixed)[0].startswith("not supported")
    mixed[every[0]] = compared(every[0][0], 0.0001, "equivalent")  # no effect as large as the bound: not consistent
    assert claim_1(mixed)[0].startswith("not supported")
    noisy = (0.02, -0.03, 0.0)
    unclear = {k: compared(k[0], 0.005, "inconclusive", noisy) for k in every}
    unclear[every[1]] = compared(every[1][0], -0.005, "inconclusive", noisy)
    verdict, row = claim_1(unclear)
    assert verdict.startswith("inconclusive") and "0 better, 0 equivalent, 12 inconclusive, 0 worse" in row
    assert f"in IBNorm's favour in {len(every) - 1}, against it in 1 ({every[1][0]} {every[1][1]})" in row
    del unclear[every[2]]
    assert claim_1(unclear)[0].startswith("pending")
    # the confirmatory test decides, whatever the main table says
    confirm = {(m, "ib_tanh:strength=4.0"): compared(m, 0.05, "better") for m in R.FAMILIES}
    verdict, row = claim_1(unclear, confirm)
    assert verdict == "supported" and row.split("| ")[3].startswith("confirmatory test: 4 better")
    confirm[("gpt2-mini", "ib_tanh:strength=4.0")] = compared("gpt2-mini", 0.0, "equivalent")
    assert claim_1(unclear, confirm)[0] == "not supported"
    del confirm[("gpt2-mini", "ib_tanh:strength=4.0")]
    confirm[("vit-mini", "ib_tanh:strength=4.0")] = compared("vit-mini", 0.001, "inconclusive")
    assert claim_1(unclear, confirm)[0].startswith("pending (exploratory: ")


def test_claim_4_can_fail_on_the_stability_ladders():
    """Claim 4 is not supported as soon as an op's largest stable rate is below its family's base norm's."""
    from ibnorm.lab import reproduce as R
    from ibnorm.lab import results as RS

    def claim_4(stability):
        row = next(line for line in RS.claims_section({}, {}, {}, {}, [], stability=stability) if line.startswith("| 4."))
        return row.split("**")[1], row
    every = {(m, n): 0.3 for m in R.FAMILIES for n in R.STABILITY_NORMS}
    assert claim_4(every)[0] == "supported"
    lower = {**every, ("gpt2-mini", "ib_log"): 0.1}
    verdict, row = claim_4(lower)
    assert verdict == "not supported" and "gpt2-mini ib_log (0.1 < 0.3)" in row
    climbing = {**every, ("vit-mini", "base"): None}
    assert claim_4(climbing)[0] == "pending"


def test_a_ladder_is_stable_below_its_first_divergence():
    from ibnorm.lab.results.stability import largest_stable
    ok = {"final": {"val_loss": 1.0}, "curve": [[10, 3.0], [500, 1.0]]}
    up = {"final": {"val_loss": 4.0}, "curve": [[10, 3.0], [500, 4.0]]}  # ended above its start
    nan = {"diverged_at": 5, "curve": []}
    assert largest_stable({0.01: ok, 0.03: ok, 0.1: up, 0.3: nan}) == 0.03
    assert largest_stable({0.01: ok, 0.03: ok}) is None  # still climbing
    assert largest_stable({0.1: ok, 0.3: ok, 1.0: ok}) == 1.0  # the ladder's end
    assert largest_stable({0.01: nan, 0.03: ok}) == 0.0


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


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n", [2, 3, 8])
def test_paired_t_p_value_matches_scipy(seed, n):
    from ibnorm.lab.stats import t_p_value
    rng = np.random.default_rng(seed)
    base = rng.normal(1.0, 0.1, n)
    values = base + rng.normal(0.02, 0.03, n)
    assert t_p_value(paired(list(values), list(base))) == pytest.approx(sps.ttest_rel(values, base).pvalue, rel=1e-7)


def test_holm_matches_the_step_down_rule():
    from ibnorm.lab.stats import holm
    ps = {"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005, "e": math.nan}
    adj = holm(ps)
    # sorted: d 0.005*4=0.02, a 0.01*3=0.03, c 0.03*2=0.06, b max(0.06, 0.04*1)=0.06
    assert adj["d"] == pytest.approx(0.02) and adj["a"] == pytest.approx(0.03)
    assert adj["c"] == pytest.approx(0.06) and adj["b"] == pytest.approx(0.06) and math.isnan(adj["e"])
    assert holm({"x": 0.6, "y": 0.7}) == {"x": 1.0, "y": 1.0}


def test_minimum_detectable_difference_has_the_power_it_claims():
    """Simulated: a true difference equal to the MDD is detected about 80% of the time (paired t, alpha 0.05)."""
    from ibnorm.lab.stats import min_detectable, seeds_needed
    rng = np.random.default_rng(0)
    for n in (3, 8):
        mdd = min_detectable(1.0, n)
        d = rng.normal(mdd, 1.0, (20000, n))
        p = sps.ttest_1samp(d, 0.0, axis=1).pvalue
        assert 0.74 < (p < 0.05).mean() < 0.86, n  # the approximation is within a few points of 80%
    # the figure: 3 seeds need about 4.3 + 1.06 standard errors
    assert min_detectable(1.0, 3) == pytest.approx((sps.t.ppf(0.975, 2) + sps.t.ppf(0.8, 2)) / math.sqrt(3))
    n = seeds_needed(0.5, 1.0)
    assert min_detectable(1.0, n) <= 0.5 < min_detectable(1.0, n - 1)
    assert seeds_needed(1e-6, 1.0, most=50) is None


def test_equivalence_needs_the_90_percent_interval_inside_the_bound():
    from ibnorm.lab.stats import equivalent
    base = [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7]
    near = paired([b + 0.001 * (-1) ** i for i, b in enumerate(base)], base, confidence=0.9)
    assert equivalent(near, 0.01) and not equivalent(near, 0.0005)
    shifted = paired([b + 0.0095 + 0.002 * (-1) ** i for i, b in enumerate(base)], base, confidence=0.9)
    assert not equivalent(shifted, 0.01)  # the interval reaches past +0.01
    with pytest.raises(ValueError, match="90%"):
        equivalent(paired(base, base), 0.01)
