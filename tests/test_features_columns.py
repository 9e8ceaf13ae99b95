"""Each family's names label the columns its kernel writes: every named column equals its formula, computed
here from the bars in plain numpy, window by window, at rows spread over a real hourly series."""

from __future__ import annotations

import math
import os

import numba
import numpy as np
import pytest

from dualhrq.data.market_rules import LULD, SSR
from dualhrq.data.resample import resample
from dualhrq.data.sources import load_dataset
from dualhrq.features import (
    BAR_FEATURES,
    BAR_WINDOW,
    FINE_FEATURES,
    LONG,
    MU1,
    PATTERN_SUMMARY,
    POSITION_FEATURES,
    REGIME_FEATURES,
    REGIME_WINDOW,
    SHORT,
    PositionRule,
    bar_features,
    bipower_variation,
    fine_features,
    kernels,
    pattern_features,
    position_features,
    realized_variance,
    regime_features,
    state_of,
    tsrv,
)
from dualhrq.features.market import luld_table

WINDOW = 24  # pattern window
FINE = load_dataset("eurusd_1h").bars.slice(0, 900)
COARSE = resample(FINE, "1d")
ROWS = np.random.default_rng(0).choice(np.arange(REGIME_WINDOW + 30 * 24, len(FINE)), 40, replace=False)


def _named(matrix: np.ndarray, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    assert matrix.shape[1] == len(names)
    return {name: matrix[:, j] for j, name in enumerate(names)}


def _z(x: np.ndarray) -> float:
    std = x.std()
    return 0.0 if std == 0 else float((x[-1] - x.mean()) / std)


def test_every_family_has_one_name_per_kernel_column():
    assert len(BAR_FEATURES) == kernels.BAR_WIDTH and len(REGIME_FEATURES) == kernels.REGIME_WIDTH
    assert len(POSITION_FEATURES) == kernels.POSITION_WIDTH and len(PATTERN_SUMMARY) == kernels.PATTERN_SUMMARY_WIDTH
    assert FINE_FEATURES == BAR_FEATURES + POSITION_FEATURES
    assert len(luld_table(1)) == len(luld_table(2)) == kernels.LULD_TABLE_WIDTH  # the layout the kernels index
    for names in (BAR_FEATURES, REGIME_FEATURES, PATTERN_SUMMARY):
        assert len(set(names)) == len(names)
    assert fine_features(FINE, PositionRule()).shape == (len(FINE), len(FINE_FEATURES))
    assert pattern_features(FINE, WINDOW).shape == (len(FINE), WINDOW + len(PATTERN_SUMMARY))


def test_each_bar_column_is_its_formula():
    o, h, l, c, v = FINE.o, FINE.h, FINE.l, FINE.c, FINE.v  # noqa: E741
    lc = np.log(c)
    r = np.diff(lc, prepend=np.nan)
    cols = _named(bar_features(FINE), BAR_FEATURES)
    w = BAR_WINDOW
    for i in ROWS:
        win = slice(i - w + 1, i + 1)
        rw, a = r[win], np.abs(r[win])
        rv = math.sqrt(np.sum(rw**2))
        want = {
            "ret": lc[i] - lc[i - 1], "gap": math.log(o[i] / c[i - 1]), "body": math.log(c[i] / o[i]),
            "range": math.log(h[i] / l[i]), "upper_wick": math.log(h[i] / max(o[i], c[i])),
            "lower_wick": math.log(min(o[i], c[i]) / l[i]), "volume_z": _z(np.log1p(v[win])),
            "mom_5": lc[i] - lc[i - 5], "mom_20": lc[i] - lc[i - 20], "meanrev_z": _z(lc[win]), "rv": rv,
            "bpv": math.sqrt(bipower_variation(rw)),
            "range_vol": math.sqrt(np.sum(np.log(h[win] / l[win]) ** 2) / (4 * math.log(2))),
            "ret_z": r[i] / (rv / math.sqrt(w)),
            "log_amihud": math.log((a.sum() + 1e-12) / (np.sum(c[win] * v[win]) + 1e-12)),
            "close_loc": (c[i] - l[i]) / (h[i] - l[i]),
        }
        assert set(want) == set(BAR_FEATURES)
        for name, value in want.items():
            assert cols[name][i] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, i)


def test_each_regime_column_is_its_formula():
    h, l, c, v = FINE.h, FINE.l, FINE.c, FINE.v  # noqa: E741
    lc = np.log(c)
    r = np.diff(lc, prepend=np.nan)
    cols = _named(regime_features(FINE, COARSE), REGIME_FEATURES)
    w, q, wc = REGIME_WINDOW, REGIME_WINDOW // 4, 20
    for i in ROWS:
        win = slice(i - w + 1, i + 1)
        rw = r[win]
        rv, bpv = np.sum(rw**2), bipower_variation(rw)
        d = rw - rw.mean()
        m2, m3, m4 = np.mean(d**2), np.mean(d**3), np.mean(d**4)
        lv = np.log1p(v[win])
        closed = np.flatnonzero(COARSE.t <= FINE.t[i])  # the coarse bars visible at bar i
        last = closed[-1]
        prior = COARSE.c[last]
        span = slice(last - wc + 1, last + 1)
        low, high = COARSE.l[span].min(), COARSE.h[span].max()
        same_period = (np.searchsorted(COARSE.t, FINE.t[win], side="right") == last + 1)
        triggered_now = l[win][same_period].min() <= SSR.trigger_ratio * prior
        triggered_last = COARSE.l[last] <= SSR.trigger_ratio * COARSE.c[last - 1]
        band = (LULD.above_high if prior > LULD.high_price else LULD.middle if prior >= LULD.low_price
                else LULD.below_low)
        half = min(c[i - 1] * band.tier1, band.cap or math.inf)  # reference: the previous fine close
        want = {
            "rv_vol": math.sqrt(rv), "tsrv_vol": math.sqrt(max(tsrv(lc[i - w:i + 1]), 0.0)),
            "bpv_vol": math.sqrt(bpv), "jump_share": min(max(1 - bpv / rv, 0.0), 1.0),
            "vol_ratio": math.sqrt((np.sum(rw[-q:] ** 2) / q) / (rv / w)),
            "range_vol": math.sqrt(np.sum(np.log(h[win] / l[win]) ** 2) / (4 * math.log(2))),
            "trend_z": (lc[i] - lc[i - w]) / math.sqrt(rv), "efficiency": abs(rw.sum()) / np.abs(rw).sum(),
            "autocorr": np.sum(rw[1:] * rw[:-1]) / rv, "skew": m3 / m2**1.5, "kurtosis": m4 / m2**2 - 3,
            "log_amihud": math.log((np.abs(rw).sum() + 1e-12) / (np.sum(c[win] * v[win]) + 1e-12)),
            "volume_z": _z(lv), "volume_trend": lv[-q:].mean() - lv.mean(),
            "ssr_active": float(triggered_now or triggered_last), "prior_close_ret": math.log(c[i] / prior),
            "luld_distance": (half - abs(c[i] - c[i - 1])) / (2 * half),
            "coarse_mom": math.log(COARSE.c[last] / COARSE.c[last - wc]),
            "coarse_vol": math.sqrt(np.sum(np.diff(np.log(COARSE.c[last - wc:last + 1])) ** 2)),
            "coarse_position": (c[i] - low) / (high - low),
        }
        assert set(want) == set(REGIME_FEATURES)
        for name, value in want.items():
            assert cols[name][i] == pytest.approx(value, rel=1e-8, abs=1e-12), (name, i)


def test_each_pattern_column_is_its_formula():
    r = np.diff(np.log(FINE.c), prepend=np.nan)
    x = pattern_features(FINE, WINDOW)
    cols = _named(x[:, WINDOW:], PATTERN_SUMMARY)
    for i in ROWS:
        rw = r[i - WINDOW + 1:i + 1]
        vol = math.sqrt(np.mean(rw**2))
        scaled = rw / vol
        cum = np.cumsum(scaled)
        np.testing.assert_allclose(x[i, :WINDOW], scaled, rtol=1e-9)
        want = {
            "log_vol": math.log(vol), "trend_z": cum[-1] / math.sqrt(WINDOW),
            "drawdown_z": np.max(np.maximum.accumulate(np.maximum(cum, 0)) - cum) / math.sqrt(WINDOW),
            "recent_vol": math.sqrt(np.mean(scaled[-(WINDOW // 4):] ** 2)),
            "volume_z": _z(np.log1p(FINE.v[i - WINDOW + 1:i + 1])),
        }
        for name, value in want.items():
            assert cols[name][i] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, i)


def test_position_columns_flag_the_side_their_name_says_and_read_back_to_the_state():
    rule = PositionRule(horizon=2)
    states = rule.states(FINE.c)
    x = _named(position_features(FINE.c, rule), POSITION_FEATURES)
    known = states >= 0
    np.testing.assert_array_equal(x["state_long"][known], states[known] == LONG)
    np.testing.assert_array_equal(x["state_short"][known], states[known] == SHORT)
    assert {LONG, SHORT} <= set(states.tolist())
    rows = position_features(FINE.c, rule)
    assert [state_of(row) for row in rows[known]] == states[known].tolist()


def test_the_state_is_the_move_against_the_threshold_a_horizon_ago():
    rule = PositionRule(horizon=3, cost_bps=2.0, vol_threshold=0.7)
    lc = np.log(FINE.c)
    r = np.diff(lc, prepend=np.nan)
    states, theta = rule.states(FINE.c), rule.theta(FINE.c)
    for i in ROWS:
        j = i - 3
        sigma = math.sqrt(np.sum(r[j - BAR_WINDOW + 1:j + 1] ** 2)) / math.sqrt(BAR_WINDOW) * math.sqrt(3)
        assert theta[j] == pytest.approx(2e-4 + 0.7 * sigma, rel=1e-12)
        back = lc[i] - lc[j]
        assert states[i] == (LONG if back > theta[j] else SHORT if back < -theta[j] else 0)


def test_importing_the_package_turns_svml_off_before_numba_loads():
    """SVML's vector logs round differently in a loop's body and its tail: rows would depend on their place."""
    assert os.environ.get("NUMBA_DISABLE_INTEL_SVML") == "1"
    assert not numba.config.USING_SVML


def test_realized_variance_of_a_window_is_the_bar_rv_squared():
    r = np.diff(np.log(FINE.c), prepend=np.nan)
    rv = _named(bar_features(FINE), BAR_FEATURES)["rv"]
    for i in ROWS:
        assert rv[i] ** 2 == pytest.approx(realized_variance(r[i - BAR_WINDOW + 1:i + 1]), rel=1e-12)
    assert MU1 == pytest.approx(math.sqrt(2 / math.pi))
