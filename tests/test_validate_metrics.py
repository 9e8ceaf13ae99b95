"""Metrics on hand-checkable series: hit rate, IC, Sharpe after costs, drawdown, turnover."""

import math

import numpy as np
import pytest

from dualhrq.errors import InferenceError
from dualhrq.evaluate.execution import close_fill_market
from dualhrq.evaluate.metrics import (
    Predictions,
    compute_metrics,
    hit_rate,
    information_coefficient,
    max_drawdown,
    periods_per_year,
    sharpe_ratio,
)


def test_costs_are_charged_on_every_unit_of_position_change_including_the_entry():
    position = np.array([1.0, 1.0, -1.0, 0.0])
    returns = np.array([0.01, 0.02, -0.01, 0.05])
    net = close_fill_market(returns, fee_bps=10).execute(position).net
    # trades: 1 (entry), 0, 2 (flip), 1 (exit); 10 bps = 0.001 per unit
    assert net == pytest.approx([0.01 - 0.001, 0.02, 0.01 - 0.002, 0.0 - 0.001])


def test_hit_rate_counts_only_samples_with_a_position_and_a_move():
    position = np.array([1.0, -1.0, 0.0, 1.0, 0.5])
    returns = np.array([0.01, 0.01, 0.03, 0.0, -0.02])
    assert hit_rate(position, returns) == pytest.approx(1 / 3)
    assert math.isnan(hit_rate(np.zeros(3), returns[:3]))


def test_information_coefficient_is_a_rank_correlation_and_undefined_for_constant_forecasts():
    r = np.array([0.1, -0.2, 0.3, 0.0, 0.05])
    assert information_coefficient(r**3, r) == pytest.approx(1.0)  # monotone transform: perfect rank agreement
    assert information_coefficient(-r, r) == pytest.approx(-1.0)
    assert math.isnan(information_coefficient(np.full(5, 0.2), r))


def test_sharpe_is_annualised_by_the_square_root_of_periods():
    net = np.array([0.01, -0.005, 0.02, 0.0, 0.003])
    expected = net.mean() / net.std(ddof=1) * math.sqrt(252)
    assert sharpe_ratio(net, 252) == pytest.approx(expected)
    assert math.isnan(sharpe_ratio(np.zeros(4), 252))


def test_max_drawdown_is_the_worst_fall_from_a_peak():
    net = np.log(np.array([1.10, 0.5, 1.2, 0.9]))  # equity 1.1, 0.55, 0.66, 0.594
    assert max_drawdown(net) == pytest.approx(1 - 0.55 / 1.1)
    assert max_drawdown(np.log([1.1, 1.2])) == 0.0


def test_periods_per_year_from_hourly_and_daily_timestamps():
    hourly = np.arange(0, 24 * 365 * 2, dtype=np.int64) * 3_600_000_000_000
    assert periods_per_year(hourly) == pytest.approx(24 * 365.25, rel=1e-3)
    daily = np.arange(0, 366, dtype=np.int64) * 86_400_000_000_000
    assert periods_per_year(daily) == pytest.approx(365.25, rel=1e-3)


def test_compute_metrics_brings_it_together():
    position = np.array([1.0, 1.0, -1.0, -1.0])
    returns = np.array([0.01, -0.01, -0.02, 0.01])
    m = compute_metrics(Predictions(position, returns * 2), returns, close_fill_market(returns, 0.0).execute(position),
                        periods=4)
    assert m.n == 4
    assert m.hit_rate == 0.5
    assert m.ic == pytest.approx(1.0)
    assert m.turnover == pytest.approx((1 + 0 + 2 + 0) / 4)
    assert m.annual_return == pytest.approx(np.mean(position * returns) * 4)
    assert m.to_dict()["n"] == 4


def test_predictions_refuse_positions_outside_unit_range_and_non_finite_values():
    with pytest.raises(InferenceError, match="position"):
        Predictions(np.array([1.5]), np.array([0.0]))
    with pytest.raises(InferenceError, match="forecast"):
        Predictions(np.array([0.5]), np.array([np.nan]))
