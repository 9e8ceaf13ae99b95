"""SPA / Reality Check on clear cases, and the Deflated Sharpe Ratio on the paper's worked example."""

import math

import numpy as np
import pytest

from dualhrq.errors import DataError
from dualhrq.evaluate.statistics import (
    deflated_sharpe_ratio,
    expected_max_sharpe,
    probabilistic_sharpe_ratio,
    spa_test,
)

REPS = 200


def test_spa_p_value_is_small_for_a_clearly_superior_strategy():
    rng = np.random.default_rng(1)
    baseline = rng.normal(0.0, 0.01, 500)
    better = baseline + 0.004 + rng.normal(0.0, 0.002, 500)
    r = spa_test(better, baseline, reps=REPS, seed=0)
    assert r.consistent < 0.01
    assert r.lower <= r.consistent <= r.upper
    assert r.reality_check < 0.01


def test_spa_p_value_is_large_for_an_identical_or_equally_good_strategy():
    rng = np.random.default_rng(2)
    baseline = rng.normal(0.0, 0.01, 500)
    assert spa_test(baseline.copy(), baseline, reps=REPS, seed=0).consistent == 1.0
    same_mean = baseline[rng.permutation(500)]
    assert spa_test(same_mean, baseline, reps=REPS, seed=0).consistent > 0.2


def test_spa_p_value_is_large_for_a_worse_strategy():
    rng = np.random.default_rng(3)
    baseline = rng.normal(0.001, 0.01, 500)
    worse = baseline - 0.003 + rng.normal(0.0, 0.002, 500)
    r = spa_test(worse, baseline, reps=REPS, seed=0)
    # SPA's statistic is max(0, t): a worse model scores 0, which about half the recentred draws reach.
    assert r.consistent > 0.3
    assert r.upper > 0.9 and r.reality_check > 0.9
    assert spa_test(baseline - 0.003, baseline, reps=REPS).consistent == 1.0  # a constant shortfall: certain



def test_spa_refuses_mismatched_series():
    with pytest.raises(DataError, match="candidate"):
        spa_test(np.zeros(20), np.zeros(21), reps=REPS)


def test_dsr_matches_bailey_and_lopez_de_prado_worked_example():
    """The paper's example: annual SR 2.5 over 1,250 days, 100 trials with annual SR variance 0.5, skew −3,
    kurtosis 10. Hand computation: SR0 = √(0.5/250)·((1−γ)Φ⁻¹(0.99) + γΦ⁻¹(1 − 1/(100e))) = 0.1132 a day
    (1.79 annualised) and DSR = Φ((0.1581 − 0.1132)·√1249 / √(1 + 3·0.1581 + 9/4·0.1581²)) = 0.9004."""
    sr0 = expected_max_sharpe(100, 0.5 / 250)
    assert sr0 == pytest.approx(0.1132, abs=1e-4)
    dsr = probabilistic_sharpe_ratio(2.5 / math.sqrt(250), sr0, 1250, -3.0, 10.0)
    assert dsr == pytest.approx(0.9004, abs=1e-4)


def test_one_trial_deflates_to_the_probabilistic_sharpe_ratio_against_zero():
    assert expected_max_sharpe(1, 0.3) == 0.0
    rng = np.random.default_rng(4)
    r = rng.normal(0.001, 0.01, 1000)
    res = deflated_sharpe_ratio(r, np.array([r.mean() / r.std(ddof=1)]))
    assert res.n_trials == 1 and res.sr0 == 0.0
    assert res.dsr == pytest.approx(probabilistic_sharpe_ratio(res.sharpe, 0.0, 1000, res.skew, res.kurtosis))


def test_more_trials_deflate_more():
    rng = np.random.default_rng(5)
    r = rng.normal(0.002, 0.01, 750)
    trials = rng.normal(0.0, 0.05, 10)
    few = deflated_sharpe_ratio(r, trials)
    many = deflated_sharpe_ratio(r, trials, extra_trials=990)
    assert many.n_trials == 1000
    assert many.sr0 > few.sr0
    assert many.dsr < few.dsr


def test_dsr_refuses_a_constant_series():
    with pytest.raises(DataError, match="constant"):
        deflated_sharpe_ratio(np.zeros(10), np.zeros(3))
