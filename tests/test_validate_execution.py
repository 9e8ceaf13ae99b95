"""The execution model: fill price and delay, spread, fees, square-root impact with a participation cap."""

import math

import numpy as np
import pytest

from dualhrq.config import Config, ExecutionConfig, config_from_dict, config_to_dict
from dualhrq.data.bars import Bars
from dualhrq.data.splits import splits_from_config
from dualhrq.errors import ConfigurationError
from dualhrq.evaluate.execution import corwin_schultz_half_spread_bps, market_for
from dualhrq.evaluate.metrics import Predictions, periods_per_year, sharpe_ratio
from dualhrq.evaluate.validate import ValidationData, baseline_factories, run_validation

DAY = 86_400_000_000_000
GAP = 0.01  # the overnight move in the signal's direction; half of it reverses the next day


def overnight_bars(n=600, seed=0, volume=1e6):
    """Daily bars whose close-to-close move follows a signal known at the close, but happens overnight (in the
    gap to the next open) and half reverses during the next session."""
    rng = np.random.default_rng(seed)
    signal = rng.choice([-1.0, 1.0], n)
    o, c = np.empty(n), np.empty(n)
    o[0], c[0] = 100.0, 100.0
    for k in range(1, n):
        o[k] = c[k - 1] * math.exp(signal[k - 1] * GAP + rng.normal(0, 0.002))
        c[k] = o[k] * math.exp(-signal[k - 1] * GAP / 2 + rng.normal(0, 0.002))
    t = np.arange(n, dtype=np.int64) * DAY + np.datetime64("2020-01-01", "ns").astype(np.int64)
    bars = Bars(t, o, np.maximum(o, c) * 1.001, np.minimum(o, c) * 0.999, c, np.full(n, volume))
    return bars, signal


def market(bars, **execution):
    idx = np.arange(len(bars) - 1)
    returns = np.log(bars.c[idx + 1] / bars.c[idx])
    return market_for(ExecutionConfig(**execution), 2.0, returns, bars, idx), idx


def test_a_close_to_close_edge_that_reverses_overnight_is_lost_with_next_open_fills():
    bars, signal = overnight_bars()
    close, idx = market(bars, fill="close")
    next_open, _ = market(bars, fill="next_open")
    position = signal[idx]
    assert sharpe_ratio(close.execute(position).net, 252) > 0
    assert sharpe_ratio(next_open.execute(position).net, 252) <= 0


def test_defaults_fill_at_the_signal_bars_close_and_charge_half_the_round_trip_per_unit():
    bars, signal = overnight_bars(50)
    m, idx = market(bars)
    fills = m.execute(signal[idx])
    returns = np.log(bars.c[idx + 1] / bars.c[idx])
    old = signal[idx] * returns - np.abs(np.diff(signal[idx], prepend=0.0)) * 1.0 * 1e-4  # 2 bps round trip
    assert np.array_equal(fills.net, old)
    assert fills.spread.sum() == 0 and fills.impact.sum() == 0


def test_a_delay_fills_later_bars_and_a_fill_beyond_the_last_bar_never_happens():
    bars, signal = overnight_bars(40)
    m, idx = market(bars, delay_bars=2)
    expected = np.zeros(len(idx))
    expected[:-2] = np.log(bars.c[idx[:-2] + 3] / bars.c[idx[:-2] + 2])
    np.testing.assert_array_equal(m.fill_return, expected)
    fills = m.execute(np.ones(len(idx)))
    assert fills.position[-3] == 1.0 and fills.gross[-2:].sum() == 0.0


def test_quadrupling_the_order_doubles_the_impact_cost_per_unit():
    bars, signal = overnight_bars(300)
    per_unit = []
    for size in (100.0, 400.0):
        m, idx = market(bars, impact_coef=0.5, order_size=size, participation_cap=0.5)
        fills = m.execute(signal[idx])
        assert fills.impact.sum() > 0
        per_unit.append(fills.impact.sum() / fills.traded.sum())
    assert per_unit[1] / per_unit[0] == pytest.approx(2.0, rel=1e-12)


def test_the_participation_cap_limits_each_fill_to_a_share_of_the_bars_volume():
    bars, _ = overnight_bars(30, volume=1000.0)
    m, idx = market(bars, participation_cap=0.1, order_size=400.0)  # 100 units a bar: a quarter of a position
    fills = m.execute(np.ones(len(idx)))
    np.testing.assert_allclose(fills.position[:5], [0.25, 0.5, 0.75, 1.0, 1.0])
    assert fills.traded.max() <= 0.25 + 1e-12


def test_the_high_low_spread_estimate_is_zero_without_range_and_charged_per_unit_traded():
    bars, signal = overnight_bars(100)
    flat = Bars(bars.t, bars.c, bars.c, bars.c, bars.c, bars.v)
    assert np.all(corwin_schultz_half_spread_bps(flat, 10) == 0)
    m, idx = market(bars, spread="high_low", spread_window=10)
    half = corwin_schultz_half_spread_bps(bars, 10)
    assert np.all(half >= 0) and half[20:].mean() > 0
    fills = m.execute(signal[idx])
    np.testing.assert_allclose(fills.spread, fills.traded * half[idx] * 1e-4)


def test_impact_on_bars_without_volume_is_refused_naming_the_setting():
    bars, _ = overnight_bars(30, volume=0.0)
    with pytest.raises(ConfigurationError, match="validate.execution"):
        market(bars, impact_coef=0.1)


def test_fill_settings_that_need_bars_are_refused_on_data_without_them():
    with pytest.raises(ConfigurationError, match="validate.execution"):
        market_for(ExecutionConfig(fill="next_open"), 1.0, np.zeros(5), None, None)


# ---------------------------------------------------------------- through run_validation


class Signal:
    """Takes the position the overnight signal says, known at each sample's close."""

    name = "hrm"

    def __init__(self, signal):
        self.signal = signal

    def fit(self, train_idx, resume_from):
        return None

    def predict(self, test_idx):
        return Predictions(self.signal[test_idx], self.signal[test_idx])


def overnight_data():
    bars, signal = overnight_bars()
    idx = np.arange(30, len(bars) - 1)
    returns = np.log(bars.c[idx + 1] / bars.c[idx])
    features = np.column_stack([np.log(bars.c[idx] / bars.c[idx - 1]), np.log(bars.c[idx] / bars.c[idx - 20])])
    data = ValidationData(name="overnight", t=bars.t[idx], t_known=bars.t[idx + 1], returns=returns,
                          features=features, bars=bars, bar_index=idx)
    return data, signal[idx]


def validate_config(tiny_config: Config, **execution) -> Config:
    d = config_to_dict(tiny_config)
    d["validate"].update(train_bars=200, test_bars=100, step_bars=100, purge_bars=2, embargo_bars=1,
                         bootstrap_reps=50, permuted_control_splits=0, truncation_cuts=2, leak_max_corr=0.99,
                         execution=execution)
    return config_from_dict(d)


def test_validation_reports_gross_each_cost_and_break_even_and_tests_net_returns(tiny_config, tmp_path):
    data, signal = overnight_data()
    cfg = validate_config(tiny_config, fill="close", half_spread_bps=3.0, fee_bps=1.0)
    factories = [lambda d, _: Signal(signal)] + baseline_factories(cfg.validate)[:2]
    close = run_validation(cfg, data, factories, tmp_path / "close", progress=False)
    m = close.overall["hrm"]
    assert m.sharpe > 0 and m.spread_cost > 0 and m.fee_cost > 0 and m.impact_cost == 0
    assert m.spread_cost == pytest.approx(3 * m.fee_cost)
    assert m.gross_return > m.annual_return
    # A fee of the break-even cost per unit turned over leaves nothing of the gross return.
    at_break_even = run_validation(validate_config(tiny_config, fee_bps=m.break_even_bps), data, factories[:1],
                                   tmp_path / "even", progress=False)
    assert at_break_even.overall["hrm"].annual_return == pytest.approx(0.0, abs=1e-9)
    assert "## Execution costs" in (tmp_path / "close" / "report.md").read_text()

    later = run_validation(validate_config(tiny_config, fill="next_open", half_spread_bps=3.0, fee_bps=1.0),
                           data, factories, tmp_path / "close", progress=False)
    assert later.overall["hrm"].sharpe <= 0
    # The statistics test what the fills earn: the same predictions, other net returns.
    assert later.net_returns["hrm"].sum() < close.net_returns["hrm"].sum()
    assert later.dsr["hrm"].sharpe < 0 < close.dsr["hrm"].sharpe


def test_default_execution_reproduces_the_seeds_accounting_exactly(tiny_config, tmp_path):
    data, signal = overnight_data()
    cfg = validate_config(tiny_config)
    result = run_validation(cfg, data, [lambda d, _: Signal(signal)], tmp_path, progress=False)
    oos = np.concatenate([s.test for s in splits_from_config(cfg.validate, data.t, data.t_known)])
    p, r = signal[oos], data.returns[oos]
    cost_bps = cfg.data.cost_bps / 2
    seed_net = p * r - np.abs(np.diff(p, prepend=0.0)) * cost_bps * 1e-4
    assert np.array_equal(result.net_returns["hrm"], seed_net)
    periods = periods_per_year(data.t)
    assert result.overall["hrm"].annual_return == seed_net.mean() * periods
    assert result.overall["hrm"].sharpe == sharpe_ratio(seed_net, periods)
    assert result.overall["hrm"].cost == pytest.approx(np.abs(np.diff(p, prepend=0.0)).sum() * cost_bps * 1e-4,
                                                       rel=1e-12)


@pytest.mark.parametrize(("execution", "path"), [({"fill": "vwap"}, "validate.execution.fill"),
                                                  ({"participation_cap": 1.5}, "validate.execution.participation_cap"),
                                                  ({"slippage": 1}, "validate.execution.slippage")])
def test_bad_execution_settings_are_refused_naming_the_field(tiny_config, execution, path):
    d = config_to_dict(tiny_config)
    d["validate"]["execution"] = execution
    with pytest.raises(ConfigurationError, match=path.replace(".", r"\.")):
        config_from_dict(d)
