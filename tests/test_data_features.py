"""Feature estimators against known truth, causality, the market-rule features and normalisation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dualhrq.data.bars import Bars
from dualhrq.data.resample import default_coarse_rule, resample, visible_counts
from dualhrq.data.sources import load_dataset
from dualhrq.data.synthetic import random_bars
from dualhrq.data.windows import needs
from dualhrq.errors import ConfigurationError, ModelLoadError
from dualhrq.features import (
    BAR_FEATURES,
    BAR_WARMUP,
    CLIP,
    PATTERN_SUMMARY,
    REGIME_FEATURES,
    REGIME_WARMUP,
    ColumnStats,
    FeatureStats,
    PositionRule,
    bar_features,
    bipower_variation,
    fine_features,
    luld_band_distance,
    luld_half_width,
    pattern_features,
    realized_variance,
    regime_features,
    tsrv,
)

# ---------------------------------------------------------------- estimators vs known truth


def _brownian_log_prices(n: int, integrated_variance: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([[0.0], np.cumsum(rng.normal(0.0, np.sqrt(integrated_variance / n), n))])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tsrv_recovers_integrated_variance_where_rv_is_biased_by_noise(seed):
    n, iv, noise = 23_400, 1e-4, 2e-4  # a day at 1% volatility, observed every second with 0.02% noise
    x = _brownian_log_prices(n, iv, seed)
    observed = x + np.random.default_rng(100 + seed).normal(0.0, noise, x.shape)
    assert realized_variance(np.diff(observed)) > 10 * iv  # plain RV mostly measures noise: + 2 n noise^2
    # The slow scale of Zhang, Mykland & Ait-Sahalia (2005): K* = (12 noise^4 / integrated quarticity)^(1/3) n^(2/3)
    k = round((12 * noise**4 / iv**2) ** (1 / 3) * n ** (2 / 3))
    assert abs(tsrv(observed, k) - iv) < 0.10 * iv


def test_tsrv_is_unbiased_without_noise_and_rejects_bad_k():
    x = _brownian_log_prices(20_000, 1e-4, 3)
    assert tsrv(x, 2) == pytest.approx(1e-4, rel=0.05)
    with pytest.raises(ConfigurationError, match="k must be"):
        tsrv(x, k=1)


def test_bpv_matches_rv_without_jumps_and_removes_a_planted_jump():
    r = np.diff(_brownian_log_prices(100_000, 1e-4, 4))
    assert bipower_variation(r) == pytest.approx(realized_variance(r), rel=0.05)
    jump = 0.02  # jump^2 is 4x the day's diffusive variance
    r_jump = r.copy()
    r_jump[50_000] += jump
    rv = realized_variance(r_jump)
    assert rv == pytest.approx(realized_variance(r) + jump**2, rel=0.01)
    assert bipower_variation(r_jump) == pytest.approx(rv - jump**2, rel=0.05)


def test_estimators_work_on_rolling_windows_like_on_one_window():
    r = np.random.default_rng(5).normal(0, 0.01, (7, 48))
    for i in range(7):
        assert bipower_variation(r)[i] == bipower_variation(r[i])
        assert realized_variance(r)[i] == realized_variance(r[i])


# ---------------------------------------------------------------- shapes, warm-up, causality


def test_feature_matrices_have_the_documented_widths_and_warm_up():
    fine = random_bars(600)  # 25 days: enough for the 21 coarse bars the regime window needs
    coarse = resample(fine, "1d")
    bf, rf, pf = bar_features(fine), regime_features(fine, coarse), pattern_features(fine, 24)
    assert bf.shape == (600, len(BAR_FEATURES)) and rf.shape == (600, 20) == (600, len(REGIME_FEATURES))
    assert pf.shape == (600, 24 + len(PATTERN_SUMMARY))
    assert np.isnan(bf[:BAR_WARMUP]).any(axis=1).all() and np.isfinite(bf[BAR_WARMUP:]).all()
    assert np.isnan(rf[:REGIME_WARMUP]).all() and np.isfinite(pf[24:]).all() and np.isnan(pf[:24]).all()
    assert np.isfinite(rf[-1]).all()


def _perturb_after(bars: Bars, i: int, seed: int) -> Bars:
    """The same bars up to i; every later price and volume changed (still valid bars)."""
    g = np.exp(np.random.default_rng(seed).normal(0, 0.05, len(bars)))
    g[: i + 1] = 1.0
    wick = np.where(np.arange(len(bars)) > i, 1.01, 1.0)
    return Bars(bars.t, bars.o * g, bars.h * g * wick, bars.l * g / wick, bars.c * g, bars.v * g).validate()


@pytest.mark.parametrize("seed", range(5))
def test_changing_bars_after_i_leaves_every_feature_row_up_to_i_unchanged(seed):
    fine = random_bars(400, seed=seed)
    i = int(np.random.default_rng(seed).integers(50, 398))
    other = _perturb_after(fine, i, seed)
    a = (bar_features(fine), regime_features(fine, resample(fine, "1d")), pattern_features(fine, 24))
    b = (bar_features(other), regime_features(other, resample(other, "1d")), pattern_features(other, 24))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x[: i + 1], y[: i + 1])
        assert not np.array_equal(x[i + 1 :], y[i + 1 :])  # the perturbation did reach the features


@pytest.mark.parametrize("dataset", ["eurusd_1h", "sp500_1d"])
def test_serving_rows_equal_training_rows_bit_for_bit_on_real_windows(tiny_config, dataset):
    """One feature path: the rows serving computes from a request's few bars (`last=`, the runtime's single
    window) are the rows training computes over the whole history, exactly, on hundreds of real windows."""
    data = load_dataset(dataset)
    fine_all = data.bars
    coarse_all = resample(fine_all, default_coarse_rule(data.timeframe))
    m, window = tiny_config.model, tiny_config.patterns.window
    rule = PositionRule.from_config(tiny_config.data)
    n_coarse, n_fine = needs(m, window, rule)
    full = {"coarse": bar_features(coarse_all), "fine": fine_features(fine_all, rule),
            "regime": regime_features(fine_all, coarse_all), "pattern": pattern_features(fine_all, window)}
    known = visible_counts(coarse_all.t, fine_all.t)
    ends = np.flatnonzero((np.arange(len(fine_all)) >= n_fine - 1) & (known >= n_coarse))
    for i in np.random.default_rng(0).choice(ends, 150, replace=False):
        k = int(known[i])
        fine, coarse = fine_all.slice(i + 1 - n_fine, i + 1), coarse_all.slice(k - n_coarse, k)
        served = {"coarse": bar_features(coarse, last=m.coarse_len), "fine": fine_features(fine, rule, last=m.fine_len),
                  "regime": regime_features(fine, coarse, last=1), "pattern": pattern_features(fine, window, last=1)}
        trained = {"coarse": full["coarse"][k - m.coarse_len:k], "fine": full["fine"][i + 1 - m.fine_len:i + 1],
                   "regime": full["regime"][i:i + 1], "pattern": full["pattern"][i:i + 1]}
        for group, rows in served.items():
            assert np.isfinite(rows).all(), (group, i)
            np.testing.assert_array_equal(rows, trained[group], err_msg=f"{dataset} {group} at bar {i}")


def test_asking_for_no_rows_is_refused():
    with pytest.raises(ConfigurationError, match="last: must be >= 1"):
        bar_features(random_bars(50), last=0)


def test_degenerate_flat_windows_give_finite_features():
    n = 600
    t = random_bars(n).t
    flat = Bars(t, *np.full((4, n), 50.0), np.zeros(n))
    coarse = resample(flat, "1d")
    for x in (bar_features(flat)[BAR_WARMUP:], regime_features(flat, coarse)[-1:], pattern_features(flat, 24)[24:]):
        assert np.isfinite(x).all()


def test_pattern_features_are_scale_free():
    fine = random_bars(100)
    squared = Bars(fine.t, fine.o**2, fine.h**2, fine.l**2, fine.c**2, fine.v)  # doubles every log return
    np.testing.assert_allclose(pattern_features(fine, 24)[24:, :24], pattern_features(squared, 24)[24:, :24],
                               rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- market rules (dualhrq.data.market_rules)


def test_luld_bands_follow_the_rules_worked_example():
    assert luld_half_width(np.array(50.0), np.array(50.0)) == pytest.approx(2.5)  # bands 47.50-52.50
    assert luld_half_width(np.array(50.62), np.array(50.0)) == pytest.approx(2.531)  # 48.09-53.15
    assert luld_half_width(np.array(50.0), np.array(50.0), tier=2) == pytest.approx(5.0)
    assert luld_half_width(np.array(2.0), np.array(2.0)) == pytest.approx(0.4)  # $0.75-$3: 20%
    assert luld_half_width(np.array(0.5), np.array(0.5)) == pytest.approx(0.15)  # lesser of $0.15, 75%
    assert luld_half_width(np.array(0.1), np.array(0.1)) == pytest.approx(0.075)
    assert luld_band_distance(np.array(50.0), np.array(50.0), np.array(50.0)) == pytest.approx(0.5)
    assert luld_band_distance(np.array(52.5), np.array(50.0), np.array(50.0)) == pytest.approx(0.0)
    assert luld_band_distance(np.array(47.0), np.array(50.0), np.array(50.0)) < 0  # outside the band


def test_ssr_state_lasts_the_trigger_period_and_the_next_one():
    day = 24
    fine = random_bars(day * 6, vol=0.0005)  # six whole days of hourly bars
    coarse_t = resample(fine, "1d").t
    k = np.searchsorted(coarse_t, fine.t, side="right")
    drop_at = int(np.flatnonzero(k == 3)[5])  # day 4, sixth hour: falls to 88% of day 3's close
    prior = resample(fine, "1d").c[2]
    low = fine.l.copy()
    low[drop_at] = 0.88 * prior
    o = np.maximum(fine.o, low)
    c = np.maximum(fine.c, low)
    crashed = Bars(fine.t, o, np.maximum(fine.h, np.maximum(o, c)), low, c, fine.v).validate()
    ssr = regime_features(crashed, resample(crashed, "1d"))[:, REGIME_FEATURES.index("ssr_active")]
    known = ~np.isnan(ssr)
    # Bars with k == 3 are day 4 (the trigger day), k == 4 is day 5 (restricted all day): the state at a
    # bar's close, so the bar that closes day 5 (k == 5) already sees the restriction over.
    assert (ssr[drop_at : np.flatnonzero(k == 4)[-1] + 1] == 1).all()
    assert (ssr[known & (np.arange(len(k)) < drop_at)] == 0).all()
    assert (ssr[k >= 5] == 0).all()


# ---------------------------------------------------------------- normalisation


def test_feature_stats_standardise_and_clip_and_ignore_incomplete_rows():
    rows = np.random.default_rng(0).normal(3.0, 2.0, (500, 2))
    rows[0] = np.nan
    stats = ColumnStats.fit(("a", "b", "c"), np.column_stack([rows, np.full(500, 7.0)]))
    z = stats.apply(np.column_stack([rows[1:], np.full(499, 7.0)]))
    assert z.dtype == np.float32
    np.testing.assert_allclose(z[:, :2].mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(z[:, :2].std(axis=0), 1, atol=1e-5)
    assert (z[:, 2] == 0).all()  # a constant column carries nothing
    assert stats.apply(np.array([[1e9, -1e9, 7.0]])).tolist() == [[CLIP, -CLIP, 0.0]]


def _stats() -> FeatureStats:
    fine = random_bars(800)
    coarse = resample(fine, "1d")
    return FeatureStats.fit(bar_features(coarse), fine_features(fine, PositionRule()), regime_features(fine, coarse))


def test_feature_stats_survive_a_json_round_trip():
    stats = _stats()
    back = FeatureStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    for group in ("coarse", "fine", "regime"):
        a, b = getattr(stats, group), getattr(back, group)
        assert a.names == b.names
        np.testing.assert_array_equal(a.mean, b.mean)
        np.testing.assert_array_equal(a.std, b.std)


def test_feature_stats_from_other_feature_code_are_refused():
    d = _stats().to_dict()
    d["fine"]["names"][0] = "renamed"
    with pytest.raises(ModelLoadError, match="feature_stats.fine: fitted on features"):
        FeatureStats.from_dict(d)
    d = _stats().to_dict()
    d["regime"]["std"][3] = 0.0
    with pytest.raises(ModelLoadError, match="feature_stats.regime"):
        FeatureStats.from_dict(d)
