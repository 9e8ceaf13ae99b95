"""A stream's window, extended bar by bar, builds the very sample the full window of its bars would."""

from __future__ import annotations

import numpy as np
import pytest

from dualhrq.data.bars import Bars
from dualhrq.data.resample import parse_rule, resample
from dualhrq.data.sources import load_dataset
from dualhrq.data.windows import SampleBuilder, build_dataset
from dualhrq.errors import DataError
from dualhrq.features import PositionRule
from dualhrq.inputs.stream import Resync, StreamWindow


@pytest.fixture(scope="module")
def series(tiny_config):
    eurusd = load_dataset("eurusd_1h")
    ds = build_dataset(eurusd, tiny_config.model, tiny_config.data)
    builder = SampleBuilder(ds.stats, tiny_config.model, PositionRule.from_config(tiny_config.data))
    return eurusd.bars, resample(eurusd.bars, ds.coarse_rule), builder


def _between(coarse: Bars, after: int, until: int) -> Bars:
    """The coarse bars that closed in (after, until]: what a client sends with the fine bars up to ``until``."""
    lo, hi = np.searchsorted(coarse.t, [after, until], side="right")
    return coarse.slice(int(lo), int(hi))


def _start(builder: SampleBuilder, fine: Bars, coarse: Bars, end: int) -> StreamWindow:
    fine_ns = parse_rule("1h").ns
    window = builder.bars(coarse, fine.slice(0, end))
    return StreamWindow(builder, fine_ns, 3 * fine_ns, window, builder.sample(window))


def _assert_same(a, b):
    np.testing.assert_array_equal(a.h_tokens, b.h_tokens)
    np.testing.assert_array_equal(a.l_tokens, b.l_tokens)
    np.testing.assert_array_equal(a.regime_features, b.regime_features)
    np.testing.assert_array_equal(a.pattern_features, b.pattern_features)
    assert (a.as_of, a.state) == (b.as_of, b.state)


@pytest.mark.parametrize("seed", range(4))
def test_a_stream_extended_by_random_splits_of_a_real_series_equals_the_full_window_bit_for_bit(series, seed):
    fine, coarse, builder = series
    rng = np.random.default_rng(seed)
    _, n_fine = builder.needs
    start = int(rng.integers(n_fine + 24 * 45, len(fine) - 400))
    stream = _start(builder, fine, coarse, start)
    end = start
    for _ in range(60):  # chunks of 1..30 fine bars: within a day, across coarse closes, beyond a whole window
        k = int(rng.choice([1, 1, 1, 2, 3, 7, 30, 60]))
        new = fine.slice(end, end + k)
        stream.extend(_between(coarse, int(fine.t[end - 1]), int(new.t[-1])), new)
        end += k
        _assert_same(stream.sample(), builder(coarse, fine.slice(0, end)))


def test_a_missing_bar_or_one_not_newer_asks_for_a_resync_and_leaves_the_stream_as_it_was(series):
    fine, coarse, builder = series
    _, n_fine = builder.needs
    start = n_fine + 24 * 60 + 2  # a weekday hour: the next bars are one hour apart
    stream = _start(builder, fine, coarse, start)
    before = stream.sample()
    assert fine.t[start + 1] - fine.t[start] == parse_rule("1h").ns
    with pytest.raises(Resync, match="a bar is missing"):
        stream.extend(_between(coarse, int(fine.t[start - 1]), int(fine.t[start + 1])), fine.slice(start + 1,
                                                                                                    start + 2))
    with pytest.raises(Resync, match="not newer"):
        stream.extend(coarse.slice(0, 0), fine.slice(start - 1, start))
    with pytest.raises(DataError, match="at least one"):
        stream.extend(coarse.slice(0, 0), fine.slice(start, start))
    _assert_same(stream.sample(), before)
    stream.extend(_between(coarse, int(fine.t[start - 1]), int(fine.t[start])), fine.slice(start, start + 1))
    _assert_same(stream.sample(), builder(coarse, fine.slice(0, start + 1)))


def test_a_weekend_is_a_market_closure_not_a_missing_bar(series):
    fine, coarse, builder = series
    _, n_fine = builder.needs
    gaps = np.diff(fine.t)
    weekend = int(np.flatnonzero(gaps > 24 * parse_rule("1h").ns)[-5]) + 1  # the first bar after a closure
    stream = _start(builder, fine, coarse, weekend)
    stream.extend(_between(coarse, int(fine.t[weekend - 1]), int(fine.t[weekend])), fine.slice(weekend, weekend + 1))
    _assert_same(stream.sample(), builder(coarse, fine.slice(0, weekend + 1)))


def test_a_sample_that_fails_leaves_the_stream_as_it_was(series, monkeypatch):
    fine, coarse, builder = series
    start = 3_000
    stream = _start(builder, fine, coarse, start)
    new = fine.slice(start, start + 1)
    stream.extend(_between(coarse, int(fine.t[start - 1]), int(new.t[-1])), new)

    def broken(*args, **kwargs):
        raise DataError("fine: incomplete features (NaN) despite enough bars")

    with monkeypatch.context() as m:
        m.setattr(SampleBuilder, "newest", broken)
        with pytest.raises(DataError):
            stream.sample()
    # Nothing was taken as computed: the next call computes the new bar's rows, as the full window has them.
    _assert_same(stream.sample(), builder(coarse, fine.slice(0, start + 1)))
