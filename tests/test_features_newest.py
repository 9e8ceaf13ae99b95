"""A stream's newest rows in one compiled call are bit for bit what each feature family's own function gives."""

from __future__ import annotations

import numpy as np
import pytest

from dualhrq.data.resample import resample
from dualhrq.data.sources import load_dataset
from dualhrq.data.windows import build_dataset
from dualhrq.errors import ConfigurationError, DataError
from dualhrq.features import PositionRule, fine_features, pattern_features, regime_features, state_of
from dualhrq.features.bar import BAR_FEATURES
from dualhrq.features.newest import newest_rows


@pytest.fixture(scope="module")
def history(tiny_config):
    eurusd = load_dataset("eurusd_1h")
    ds = build_dataset(eurusd, tiny_config.model, tiny_config.data)
    return eurusd.bars, resample(eurusd.bars, ds.coarse_rule), ds.stats, PositionRule.from_config(tiny_config.data)


@pytest.mark.parametrize("k", [1, 2, 7, 30])
def test_the_newest_rows_equal_the_feature_families_and_their_normalisation_bit_for_bit(history, k):
    fine_all, coarse_all, stats, rule = history
    rng = np.random.default_rng(k)
    for end in rng.integers(2_000, len(fine_all), size=12):
        fine = fine_all.slice(int(end) - 69, int(end))
        coarse = coarse_all.until(int(fine.t[-1]))
        coarse = coarse.slice(len(coarse) - 40)
        tokens, state, regime, pattern, incomplete = newest_rows(fine, coarse, k, rule, stats, 16)
        raw = fine_features(fine, rule, last=k)
        np.testing.assert_array_equal(tokens, stats.fine.apply(raw))
        assert state == state_of(raw[-1, len(BAR_FEATURES):])
        np.testing.assert_array_equal(regime, stats.regime.apply(regime_features(fine, coarse, last=1)[0]))
        np.testing.assert_array_equal(pattern, pattern_features(fine, 16, last=1)[0].astype(np.float32))
        assert tokens.dtype == regime.dtype == pattern.dtype == np.float32 and incomplete is None


def test_rows_whose_position_state_is_unknown_are_nan_there_as_in_the_families(history):
    fine_all, coarse_all, stats, rule = history
    fine = fine_all.slice(3_000, 3_069)
    coarse = coarse_all.until(int(fine.t[-1]))
    tokens, state, *_ = newest_rows(fine, coarse.slice(len(coarse) - 40), 69, rule, stats, 16)
    raw = fine_features(fine, rule)
    assert np.isnan(raw[:, len(BAR_FEATURES):]).any()  # the first rows have no state yet
    np.testing.assert_array_equal(tokens, stats.fine.apply(raw))
    assert state == state_of(raw[-1, len(BAR_FEATURES):])
    with pytest.raises(ConfigurationError, match="last: must be >= 1"):
        newest_rows(fine, coarse, 0, rule, stats, 16)


def test_rows_without_enough_history_are_named_as_incomplete(history):
    fine_all, coarse_all, stats, rule = history
    fine = fine_all.slice(3_000, 3_030)  # too few bars for the regime window (48)
    coarse = coarse_all.until(int(fine.t[-1]))
    *_, incomplete = newest_rows(fine, coarse.slice(len(coarse) - 40), 1, rule, stats, 16)
    assert incomplete == "regime"
    *_, incomplete = newest_rows(fine.slice(0, 10), coarse.slice(len(coarse) - 40), 1, rule, stats, 16)
    assert incomplete == "fine"  # the first incomplete one is named


def test_normalising_rows_of_the_wrong_width_is_a_data_error_naming_the_features(history):
    stats = history[2]
    with pytest.raises(DataError, match=r"ret, \.\.\.\): rows of shape \[3, 5\], expected 16 columns"):
        stats.coarse.apply(np.zeros((3, 5)))
    assert stats.regime.apply(np.zeros(20)).shape == (20,)  # one row, as a sample's regime features are
