"""Each feature family's table fixes its column order: the names are the table's keys, the matrix holds one
column per name, and the column under a name is the one its function computes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dualhrq.data.resample import resample
from dualhrq.data.synthetic import random_bars
from dualhrq.features import (
    BAR_FEATURES,
    BAR_WINDOW,
    FINE_FEATURES,
    LONG,
    PATTERN_SUMMARY,
    POSITION_FEATURES,
    REGIME_FEATURES,
    SHORT,
    PositionRule,
    bar_features,
    fine_features,
    pattern_features,
    position_features,
    realized_variance,
    regime_features,
    state_of,
)
from dualhrq.features.bar import BAR_COLUMNS, BarWindows
from dualhrq.features.pattern import PATTERN_COLUMNS, PatternWindows
from dualhrq.features.position import POSITION_SIDES
from dualhrq.features.regime import REGIME_COLUMNS, REGIME_WARMUP, RegimeWindows

WINDOW = 24  # pattern window
FINE = random_bars(600, seed=3)  # 25 days of hourly bars: the regime's coarse window fills
COARSE = resample(FINE, "1d")


def _column(matrix: np.ndarray, names: tuple[str, ...], name: str) -> np.ndarray:
    return matrix[:, names.index(name)]


def test_every_names_tuple_is_its_tables_keys_and_the_matrix_has_one_column_per_name():
    assert BAR_FEATURES == tuple(BAR_COLUMNS) and len(set(BAR_FEATURES)) == len(BAR_FEATURES)
    assert REGIME_FEATURES == tuple(REGIME_COLUMNS) and PATTERN_SUMMARY == tuple(PATTERN_COLUMNS)
    assert POSITION_FEATURES == tuple(POSITION_SIDES) and FINE_FEATURES == BAR_FEATURES + POSITION_FEATURES
    assert bar_features(FINE).shape == (len(FINE), len(BAR_FEATURES))
    assert regime_features(FINE, COARSE).shape == (len(FINE), len(REGIME_FEATURES))
    assert pattern_features(FINE, WINDOW).shape == (len(FINE), WINDOW + len(PATTERN_SUMMARY))
    assert fine_features(FINE, PositionRule()).shape == (len(FINE), len(FINE_FEATURES))


@pytest.mark.parametrize("last", [None, 1, 7])
def test_the_column_under_each_name_is_what_that_names_function_computes(last):
    regime = RegimeWindows(FINE, COARSE, last)
    warm = max(REGIME_WARMUP - (len(FINE) - regime.m), 0)  # rows regime_features blanks: a partial window
    cases = [
        (bar_features(FINE, last), BAR_FEATURES, BAR_COLUMNS, BarWindows(FINE, last), 0),
        (bar_features(COARSE, last), BAR_FEATURES, BAR_COLUMNS, BarWindows(COARSE, last), 0),
        (regime_features(FINE, COARSE, last), REGIME_FEATURES, REGIME_COLUMNS, regime, warm),
        (pattern_features(FINE, WINDOW, last)[:, WINDOW:], PATTERN_SUMMARY, PATTERN_COLUMNS,
         PatternWindows(FINE, WINDOW, last), 0),
    ]
    for matrix, names, table, shared, skip in cases:
        assert len(matrix) == shared.m
        for name, column in table.items():
            np.testing.assert_array_equal(_column(matrix, names, name)[skip:], column(shared)[skip:],
                                          err_msg=name, strict=True)


def test_named_columns_equal_their_formulas_computed_from_the_bars():
    o, h, l, c = FINE.o, FINE.h, FINE.l, FINE.c  # noqa: E741
    bars = bar_features(FINE)
    np.testing.assert_allclose(_column(bars, BAR_FEATURES, "gap")[1:], np.log(o[1:] / c[:-1]), rtol=1e-9)
    np.testing.assert_allclose(_column(bars, BAR_FEATURES, "close_loc"), (c - l) / (h - l), rtol=1e-12)
    r = np.diff(np.log(c), prepend=np.nan)
    ending_at = np.lib.stride_tricks.sliding_window_view(r, BAR_WINDOW)  # [i - BAR_WINDOW + 1]: ends at bar i
    np.testing.assert_allclose(_column(bars, BAR_FEATURES, "rv")[BAR_WINDOW:],
                               np.sqrt(realized_variance(ending_at[1:])), rtol=1e-12)

    regime = regime_features(FINE, COARSE)
    i = len(FINE) - 1
    prior_close = COARSE.c[COARSE.t <= FINE.t[i]][-1]  # the last coarse bar closed by fine bar i
    assert _column(regime, REGIME_FEATURES, "prior_close_ret")[i] == pytest.approx(math.log(c[i] / prior_close))
    returns = r[i + 1 - REGIME_WARMUP:i + 1]
    assert _column(regime, REGIME_FEATURES, "rv_vol")[i] == pytest.approx(math.sqrt(np.sum(returns**2)))

    pattern = pattern_features(FINE, WINDOW)
    scaled = r[i + 1 - WINDOW:i + 1] / math.sqrt(np.mean(r[i + 1 - WINDOW:i + 1] ** 2))
    np.testing.assert_allclose(pattern[i, :WINDOW], scaled, rtol=1e-12)
    trend_z = _column(pattern[:, WINDOW:], PATTERN_SUMMARY, "trend_z")[i]
    assert trend_z == pytest.approx(scaled.sum() / math.sqrt(WINDOW))


def test_position_columns_flag_the_side_their_name_says_and_read_back_to_the_state():
    rule = PositionRule(horizon=2)
    states = rule.states(FINE.c)
    x = position_features(FINE.c, rule)
    known = states >= 0
    np.testing.assert_array_equal(_column(x, POSITION_FEATURES, "state_long")[known], states[known] == LONG)
    np.testing.assert_array_equal(_column(x, POSITION_FEATURES, "state_short")[known], states[known] == SHORT)
    assert {LONG, SHORT} <= set(states.tolist())
    assert [state_of(row) for row in x[known]] == states[known].tolist()
