"""Two timeframes, tokenisation, the train/test split, no train/serve skew and no look-ahead."""

from __future__ import annotations

import dataclasses

import msgspec
import numpy as np
import pytest

from dualhrq.config import DataConfig
from dualhrq.data.bars import Bars, BarsError, Dataset
from dualhrq.data.resample import DAY_NS, default_coarse_rule, parse_rule, resample, visible_counts
from dualhrq.data.sources import load_dataset
from dualhrq.data.synthetic import random_bars
from dualhrq.data.windows import build_dataset, build_sample, needs
from dualhrq.errors import ConfigurationError, DataError
from dualhrq.features import BAR_FEATURES, FINE_FEATURES, REGIME_FEATURES, PositionRule

HOUR = 3600 * 10**9

# ---------------------------------------------------------------- resampling


def test_daily_bars_aggregate_the_hours_of_each_closed_day():
    fine = random_bars(24 * 3 + 5)  # three whole days from midnight, then 5 hours of a fourth
    coarse = resample(fine, "1d")
    assert len(coarse) == 3  # the fourth day has not closed
    day2 = fine.slice(24, 48)
    assert coarse.t[1] == day2.t[-1] and coarse.t[1] % DAY_NS == 0
    assert (coarse.o[1], coarse.c[1]) == (day2.o[0], day2.c[-1])
    assert (coarse.h[1], coarse.l[1], coarse.v[1]) == (day2.h.max(), day2.l.min(), day2.v.sum())


def test_a_coarse_bar_is_visible_only_once_its_period_has_closed():
    fine = random_bars(24 * 3)
    k = visible_counts(resample(fine, "1d").t, fine.t)
    # The 23:00 bar closes the day (t = midnight): from then on that day's bar is known, not before.
    assert k[22] == 0 and k[23] == 1 and k[46] == 1 and k[47] == 2


def test_weekly_bars_start_on_monday():
    fine = random_bars(30, timeframe="1d")  # 2017-07-14 (a Friday) onwards
    coarse = resample(fine, "1w")
    assert ((coarse.t // DAY_NS + 3) % 7 == 0).all()  # each ends at a Monday 00:00 (the epoch was a Thursday)
    assert coarse.o[0] == fine.o[0] and len(coarse) == 4


@pytest.mark.parametrize("rule, timeframe", [("1d", "1h"), ("1w", "1d"), ("4h", "1h")])
def test_resampled_bars_are_the_period_ends_the_server_checks_coarse_bars_against(rule, timeframe):
    from dualhrq.data.resample import first_off_period_end, period_end

    fine = random_bars(24 * 40, timeframe=timeframe)
    coarse, period = resample(fine, rule), parse_rule(rule)
    assert len(coarse) > 3 and first_off_period_end(coarse.t, period) == -1
    assert (period_end(fine.t, period) >= fine.t).all() and period_end(int(coarse.t[1]), period) == coarse.t[1]
    shifted = coarse.t.copy()
    shifted[2] -= 3 * HOUR  # stamped at an exchange's close instead
    assert first_off_period_end(shifted, period) == 2


@pytest.mark.parametrize("rule, message", [("1M", "not a fixed period"), ("3q", "not a fixed period"),
                                           ("0h", "at least 1")])
def test_bad_coarse_rules_are_refused(rule, message):
    with pytest.raises(ConfigurationError, match=message):
        parse_rule(rule)


def test_coarse_rule_must_be_longer_than_the_fine_bars():
    with pytest.raises(ConfigurationError, match="not longer than the fine bars"):
        resample(random_bars(50), "1h")
    assert default_coarse_rule("1h") == "1d" and default_coarse_rule("1d") == "1w"


# ---------------------------------------------------------------- samples


@pytest.fixture(scope="module")
def synthetic() -> Dataset:
    return Dataset("synthetic", "SYN", "1h", random_bars(1400, seed=7), "dualhrq.data.synthetic")


def test_shipped_configs_declare_the_feature_widths_the_code_computes(tiny_config, full_config):
    for cfg in (tiny_config, full_config):
        m = cfg.model
        assert (m.coarse_features, m.fine_features, m.regime_features) == (
            len(BAR_FEATURES), len(FINE_FEATURES), len(REGIME_FEATURES))


def test_needs_covers_the_token_windows_plus_warm_up(tiny_config):
    coarse, fine = needs(tiny_config.model, tiny_config.patterns.window, PositionRule.from_config(tiny_config.data))
    assert coarse >= tiny_config.model.coarse_len and fine >= tiny_config.model.fine_len
    assert (coarse, fine) == (40, 69)  # fine: 48 tokens + 20 bars of volatility + the label horizon (1)


def test_dataset_arrays_have_the_model_shapes(tiny_config, synthetic):
    m = tiny_config.model
    ds = build_dataset(synthetic, m, tiny_config.data)
    n = len(ds)
    assert ds.h_tokens.shape == (n, m.coarse_len, m.coarse_features) and ds.h_tokens.dtype == np.float32
    assert ds.l_tokens.shape == (n, m.fine_len, m.fine_features)
    assert ds.regime_features.shape == (n, m.regime_features) and ds.pattern_features.shape == (n, 24 + 5)
    assert all(np.isfinite(a).all() for a in (ds.h_tokens, ds.l_tokens, ds.regime_features, ds.pattern_features))
    assert (np.diff(ds.t) > 0).all() and (ds.t_known > ds.t).all()


def test_split_is_by_time_with_training_labels_known_before_the_test_part(tiny_config, synthetic):
    ds = build_dataset(synthetic, tiny_config.model, tiny_config.data)
    assert ds.train.max() < ds.test.min() and ds.test[-1] == len(ds) - 1
    assert len(ds.test) == round(len(ds) * (1 - tiny_config.data.train_fraction))
    assert ds.t_known[ds.train].max() < ds.t[ds.test[0]]  # purged: no training label reaches the test part
    assert len(ds.train) < ds.test[0]  # ... which here (a one-day coarse label) costs some samples


def test_normalisation_is_fitted_on_the_training_window_only(tiny_config, synthetic):
    ds = build_dataset(synthetic, tiny_config.model, tiny_config.data)
    cut = np.searchsorted(synthetic.bars.t, ds.t[ds.test[0]])  # first bar of the test part
    changed = dataclasses.replace(synthetic, bars=_perturb_from(synthetic.bars, cut, seed=1))
    again = build_dataset(changed, tiny_config.model, tiny_config.data)
    assert again.stats.to_dict() == ds.stats.to_dict()
    assert not np.array_equal(again.l_tokens[ds.test], ds.l_tokens[ds.test])


def _marked(bars: Bars, first: int, stop: int) -> Bars:
    """Bars [first, stop) with prices 1.5 times higher and 100 times the volume; the others unchanged."""
    g = np.where((np.arange(len(bars)) >= first) & (np.arange(len(bars)) < stop), 1.5, 1.0)
    return Bars(bars.t, bars.o * g, bars.h * g, bars.l * g, bars.c * g, bars.v * g ** 11.36)


def test_fit_spans_fit_the_statistics_on_their_bars_alone(tiny_config, synthetic):
    """Spans around a left-out stretch (as CPCV's test groups are): bars inside it inform no statistic, even
    through a look-back or a coarse bar from the span after it, and every training label lies in one span."""
    t = synthetic.bars.t
    spans = [(int(np.iinfo(np.int64).min), int(t[1100])), (int(t[1200]), int(np.iinfo(np.int64).max))]
    m, d = tiny_config.model, tiny_config.data
    ds = build_dataset(synthetic, m, d, fit_spans=spans)
    gap = dataclasses.replace(synthetic, bars=_marked(synthetic.bars, 1100, 1200))
    assert build_dataset(gap, m, d, fit_spans=spans).stats.to_dict() == ds.stats.to_dict()
    inside = dataclasses.replace(synthetic, bars=_marked(synthetic.bars, 1300, 1350))
    assert build_dataset(inside, m, d, fit_spans=spans).stats.to_dict() != ds.stats.to_dict()
    assert build_dataset(gap, m, d).stats.to_dict() != build_dataset(synthetic, m, d).stats.to_dict()  # one cut

    in_span = [(ds.t >= lo) & (ds.t_known < hi) for lo, hi in spans]
    np.testing.assert_array_equal(ds.train, np.flatnonzero(in_span[0] | in_span[1]))
    np.testing.assert_array_equal(ds.test, np.setdiff1d(np.arange(len(ds)), ds.train))
    assert in_span[0].any() and in_span[1].any()
    with pytest.raises(DataError, match="not both"):
        build_dataset(synthetic, m, d, test_from=int(t[700]), fit_spans=spans)


def test_dataset_rows_equal_serving_samples_bit_for_bit(tiny_config):
    """No train/serve skew: sample i of the training set is what the runtime builds from the bars it would
    have had at that moment (the fine bars up to i, every coarse bar it is sent, closed or not)."""
    eurusd = load_dataset("eurusd_1h")
    ds = build_dataset(eurusd, tiny_config.model, tiny_config.data)
    coarse = resample(eurusd.bars, ds.coarse_rule)
    rng = np.random.default_rng(0)
    for s in [0, len(ds) - 1, *rng.integers(0, len(ds), 8)]:
        sample = build_sample(coarse, eurusd.bars.slice(0, ds.bar_index[s] + 1), ds.stats, tiny_config.model,
                              PositionRule.from_config(tiny_config.data))
        assert sample.as_of == ds.t[s]
        np.testing.assert_array_equal(sample.h_tokens, ds.h_tokens[s])
        np.testing.assert_array_equal(sample.l_tokens, ds.l_tokens[s])
        np.testing.assert_array_equal(sample.regime_features, ds.regime_features[s])
        np.testing.assert_array_equal(sample.pattern_features, ds.pattern_features[s])
        assert sample.state == ds.state[s]  # the decision rule's state is the label rule's, bar for bar


def _perturb_from(bars: Bars, start: int, seed: int) -> Bars:
    """Bars identical before index ``start``; every later price and volume changed (still valid)."""
    g = np.exp(np.random.default_rng(seed).normal(0, 0.02, len(bars)))
    g[:start] = 1.0
    wick = np.where(np.arange(len(bars)) >= start, 1.003, 1.0)
    return Bars(bars.t, bars.o * g, bars.h * g * wick, bars.l * g / wick, bars.c * g, bars.v * g + 7 * (g != 1))


@pytest.mark.parametrize("seed", range(6))
def test_changing_bars_after_t_leaves_everything_known_at_t_unchanged(tiny_config, synthetic, seed):
    """Tokens, regime and pattern features of every sample at or before t, and every label known by t, are
    the same whatever happens after t."""
    m, d = tiny_config.model, tiny_config.data
    base = build_dataset(synthetic, m, d)
    s_cut = int(np.random.default_rng(seed).integers(0, len(base) - 30))
    t_cut = base.t[s_cut]
    changed = dataclasses.replace(synthetic, bars=_perturb_from(synthetic.bars, base.bar_index[s_cut] + 1, seed))
    other = build_dataset(changed, m, d, stats=base.stats)
    np.testing.assert_array_equal(other.t, base.t)
    past = base.t <= t_cut
    for name in ("h_tokens", "l_tokens", "regime_features", "pattern_features"):
        np.testing.assert_array_equal(getattr(other, name)[past], getattr(base, name)[past])
    assert not np.array_equal(other.l_tokens[~past], base.l_tokens[~past])  # the change did reach the inputs
    settled = base.t_known <= t_cut
    for name in ("out_a", "out_b", "action", "quantity", "t_known"):
        np.testing.assert_array_equal(getattr(other, name)[settled], getattr(base, name)[settled])


def test_serving_ignores_coarse_bars_not_closed_yet(tiny_config, synthetic):
    ds = build_dataset(synthetic, tiny_config.model, tiny_config.data)
    fine = synthetic.bars.slice(0, ds.bar_index[-1] + 1)
    closed = resample(fine, "1d")
    forming = resample(synthetic.bars, "1d")  # includes the day that is still open at the last fine bar
    assert forming.t[-1] > fine.t[-1]
    a = build_sample(closed, fine, ds.stats, tiny_config.model,
                         PositionRule.from_config(tiny_config.data))
    b = build_sample(forming, fine, ds.stats, tiny_config.model,
                         PositionRule.from_config(tiny_config.data))
    np.testing.assert_array_equal(a.h_tokens, b.h_tokens)
    np.testing.assert_array_equal(a.regime_features, b.regime_features)


def test_too_few_bars_are_refused_with_the_count_needed(tiny_config, synthetic):
    ds = build_dataset(synthetic, tiny_config.model, tiny_config.data)
    coarse_need, fine_need = needs(tiny_config.model, tiny_config.patterns.window,
                                   PositionRule.from_config(tiny_config.data))
    bars = synthetic.bars
    with pytest.raises(DataError, match=f"fine: {fine_need - 1} bars, need at least {fine_need}"):
        build_sample(resample(bars, "1d"), bars.slice(len(bars) - fine_need + 1), ds.stats, tiny_config.model,
                         PositionRule.from_config(tiny_config.data))
    with pytest.raises(DataError, match=f"need at least {coarse_need}"):
        build_sample(resample(bars, "1d").slice(0, 10), bars, ds.stats, tiny_config.model,
                         PositionRule.from_config(tiny_config.data))


def test_bad_request_bars_are_refused_naming_the_series(tiny_config, synthetic):
    ds = build_dataset(synthetic, tiny_config.model, tiny_config.data)
    bars = synthetic.bars
    bad = dataclasses.replace(bars, c=np.where(np.arange(len(bars)) == 5, -1.0, bars.c))
    with pytest.raises(BarsError, match="fine: row 5: close: must be > 0"):
        build_sample(resample(bars, "1d"), bad, ds.stats, tiny_config.model,
                         PositionRule.from_config(tiny_config.data))


def test_feature_widths_in_the_config_must_match_the_code(tiny_config, synthetic):
    wrong = msgspec.structs.replace(tiny_config.model, coarse_features=12)
    with pytest.raises(ConfigurationError, match="model.coarse_features: is 12, but dualhrq.data computes 16"):
        build_dataset(synthetic, wrong, tiny_config.data)


def test_too_short_a_history_is_refused(tiny_config):
    short = Dataset("short", "SYN", "1h", random_bars(24 * 41), "test")
    with pytest.raises(DataError, match="too few to split"):
        build_dataset(short, tiny_config.model, DataConfig())
