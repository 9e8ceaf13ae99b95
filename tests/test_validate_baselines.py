"""Baselines see only the past, learn only from their training window, and stay within [-1, 1]."""

import numpy as np
import pytest

from dualhrq.errors import DataError
from dualhrq.train.baselines import BuyAndHold, LogisticDirection, MomentumSign, RidgeForecast


def test_momentum_sums_only_returns_that_ended_by_the_sample():
    returns = np.array([0.01, 0.02, -0.05, 0.01, 0.03])
    m = MomentumSign(returns, lookback=2)
    pred = m.predict(np.arange(5))
    # signal[i] = returns[i-2] + returns[i-1]: never returns[i], which is earned after the sample
    np.testing.assert_allclose(pred.forecast, [0.0, 0.01, 0.03, -0.03, -0.04])
    np.testing.assert_array_equal(pred.position, [0.0, 1.0, 1.0, -1.0, -1.0])


def test_momentum_ignores_a_changed_future():
    rng = np.random.default_rng(0)
    returns = rng.normal(0, 0.01, 100)
    changed = returns.copy()
    changed[60:] = rng.normal(0, 0.01, 40)
    idx = np.arange(61)
    before, after = MomentumSign(returns, 20).predict(idx), MomentumSign(changed, 20).predict(idx)
    np.testing.assert_array_equal(before.forecast, after.forecast)


def test_buy_and_hold_is_always_long_and_forecasts_the_training_mean():
    b = BuyAndHold(np.array([0.01, 0.03, 5.0]))
    b.fit(np.array([0, 1]))
    pred = b.predict(np.array([2]))
    assert pred.position.tolist() == [1.0] and pred.forecast.tolist() == [pytest.approx(0.02)]


def test_linear_baselines_learn_a_planted_signal_from_the_training_window_only():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 3))
    returns = 0.01 * x[:, 0] + rng.normal(0, 0.002, 600)
    returns[400:] = -returns[400:]  # the relation flips after training: fitting must not have seen it
    train, test = np.arange(0, 300), np.arange(300, 400)
    for model in (RidgeForecast(x, returns, alpha=1.0), LogisticDirection(x, returns, c=1.0)):
        model.fit(train)
        pred = model.predict(test)
        assert np.all(np.abs(pred.position) <= 1)
        assert np.mean(np.sign(pred.position) == np.sign(returns[test])) > 0.8
        assert np.mean(np.sign(model.predict(np.arange(400, 600)).position) == np.sign(returns[400:])) < 0.2


def test_logistic_refuses_a_one_sided_training_window():
    x = np.ones((10, 1))
    with pytest.raises(DataError, match="same direction"):
        LogisticDirection(x, np.full(10, 0.01), c=1.0).fit(np.arange(10))
