"""Baselines see only the past, learn only from their training window, and stay within [-1, 1]."""

import numpy as np
import pytest

from dualhrq.errors import DataError
from dualhrq.evaluate.baselines import (
    BuyAndHold,
    LogisticDirection,
    MomentumSign,
    MultinomialActions,
    OneBarReversal,
    RidgeForecast,
    StateOnly,
)


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


def test_reversal_bets_against_the_last_return_known_at_the_sample():
    returns = np.array([0.01, -0.02, 0.0, 0.03])
    pred = OneBarReversal(returns).predict(np.arange(4))
    np.testing.assert_array_equal(pred.position, [0.0, -1.0, 1.0, 0.0])  # never returns[i] itself


def test_state_only_predicts_each_state_by_its_training_label_frequencies():
    # BUY=0, SELL=1, HOLD=2, CLOSE_LONG=3, CLOSE_SHORT=4; states FLAT=0, LONG=1, SHORT=2
    states = np.array([0, 0, 0, 1, 1, 2, 2, 0, 1, 2])
    actions = np.array([0, 0, 2, 3, 3, 4, 2, 1, 2, 2])
    b = StateOnly(states, actions)
    b.fit(np.arange(7))  # the last three samples are the test window: their labels are never read
    pred = b.predict(np.arange(7, 10))
    # Add-one smoothing. Flat: BUY 3/8, SELL 1/8, CLOSE_SHORT 1/8, CLOSE_LONG 1/8. Long: CLOSE_LONG 3/7
    # against 1/7 for each other action. Short: CLOSE_SHORT and HOLD 2/7 each, the rest 1/7.
    np.testing.assert_allclose(pred.position, [(3 + 1 - 1 - 1) / 8, (1 + 1 - 1 - 3) / 7, (1 + 2 - 1 - 1) / 7])
    changed = actions.copy()
    changed[7:] = 0
    c = StateOnly(states, changed)
    c.fit(np.arange(7))
    np.testing.assert_array_equal(c.predict(np.arange(7, 10)).position, pred.position)


def test_multinomial_learns_a_separable_action_and_reports_a_signed_position():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 2))
    actions = np.where(x[:, 0] > 0.5, 0, np.where(x[:, 0] < -0.5, 1, 2))  # BUY, SELL, else HOLD
    m = MultinomialActions(x, np.zeros(600, np.int64), actions, c=1.0)
    m.fit(np.arange(400))
    pred = m.predict(np.arange(400, 600))
    assert np.all(np.abs(pred.position) <= 1)
    assert np.corrcoef(pred.position, x[400:, 0])[0, 1] > 0.9
