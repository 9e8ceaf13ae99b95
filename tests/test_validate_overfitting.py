"""PBO by CSCV against an independent, loop-by-loop implementation, and on noise with and without an edge."""

from itertools import combinations

import numpy as np
import pytest
from scipy.stats import rankdata

from dualhrq.errors import ConfigurationError, DataError
from dualhrq.evaluate.overfitting import probability_of_backtest_overfitting


def reference_pbo(matrix, n_blocks):
    """Bailey et al.'s procedure written out plainly: every half of the blocks in sample, the rest out."""
    blocks = np.array_split(np.arange(len(matrix)), n_blocks)

    def sharpe(rows):
        sub = matrix[rows]
        sd = sub.std(axis=0, ddof=1)
        return np.array([m / s if s > 0 else 0.0 for m, s in zip(sub.mean(axis=0), sd)])

    logits, losses = [], []
    for chosen in combinations(range(n_blocks), n_blocks // 2):
        is_rows = np.concatenate([blocks[b] for b in chosen])
        oos_rows = np.concatenate([blocks[b] for b in range(n_blocks) if b not in chosen])
        best = int(np.argmax(sharpe(is_rows)))
        oos = sharpe(oos_rows)
        w = rankdata(oos)[best] / (matrix.shape[1] + 1)
        logits.append(np.log(w / (1 - w)))
        losses.append(oos[best] < 0)
    logits = np.array(logits)
    return float(np.mean(logits <= 0)), float(np.mean(losses)), logits


def noise(n_samples=1200, n_strategies=24, seed=0):
    return np.random.default_rng(seed).normal(0.0, 0.01, (n_samples, n_strategies))


def test_pbo_equals_an_independent_implementation_on_a_fixed_matrix():
    rng = np.random.default_rng(42)
    matrix = rng.normal(0.0002, 0.01, (503, 9)) + rng.normal(0, 0.004, (503, 1))  # correlated, uneven blocks
    matrix[:, 3] = 0.0  # a strategy that never trades
    pbo, loss, logits = reference_pbo(matrix, 10)
    got = probability_of_backtest_overfitting(matrix, n_blocks=10)
    assert got.n_combinations == 252
    assert got.pbo == pytest.approx(pbo, abs=1e-9)
    assert got.prob_oos_loss == pytest.approx(loss, abs=1e-9)
    np.testing.assert_allclose(got.logits, logits, rtol=0, atol=1e-9)


def test_pure_noise_strategies_overfit_about_half_the_time():
    # One noise matrix's PBO spreads widely (its columns' full-sample Sharpe ratios differ by chance), so the
    # claim is about noise in general: the PBO averaged over independent matrices.
    results = [probability_of_backtest_overfitting(noise(1000, seed=seed), n_blocks=16) for seed in range(20)]
    assert 0.3 <= np.mean([r.pbo for r in results]) <= 0.7
    assert 0.3 <= np.mean([r.prob_oos_loss for r in results]) <= 0.7
    assert 0.3 <= results[1].pbo <= 0.7


def test_one_strategy_with_a_real_edge_among_noise_is_picked_and_does_not_overfit():
    matrix = noise()
    edge = np.random.default_rng(1).normal(0.0025, 0.01, (len(matrix), 1))  # per-sample Sharpe 0.25
    result = probability_of_backtest_overfitting(np.hstack([matrix, edge]), n_blocks=16)
    assert result.pbo < 0.1
    assert result.pick_shares().get("trial_24", 0) > 0.9
    assert result.prob_oos_loss < 0.1


def test_bad_trial_matrices_are_refused_clearly():
    with pytest.raises(DataError, match="two strategies"):
        probability_of_backtest_overfitting(np.zeros((100, 1)))
    with pytest.raises(ConfigurationError, match="pbo_blocks"):
        probability_of_backtest_overfitting(noise(100, 3), n_blocks=5)
    with pytest.raises(DataError, match="too few"):
        probability_of_backtest_overfitting(noise(20, 3), n_blocks=16)
