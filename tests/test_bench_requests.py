"""The benchmarks' requests are cut by the runtime's one RequestWindows, with the served model's coarse rule."""

from __future__ import annotations

import numpy as np

from dualhrq.bench.requests import ModelInputs, RealWindows, SessionRequestFactory
from dualhrq.data.resample import resample
from dualhrq.data.sources import load_dataset
from dualhrq.runtime.signals import RequestWindows

WEEKLY = ModelInputs((3, 10), "1w")


def test_real_windows_carry_the_coarse_bars_of_the_models_rule():
    bars = load_dataset("eurusd_1h").bars
    weekly = resample(bars, "1w")
    real = RealWindows.from_dataset("eurusd_1h", WEEKLY, pool=8, seed=3)
    assert len(real.windows) == 8
    for coarse, fine in real.windows:
        assert len(coarse) == 3 and len(fine) == 10
        closed = weekly.until(int(fine.t[-1]))
        np.testing.assert_array_equal(coarse.t, closed.t[-3:])  # the last weekly bars closed by the window's end


def test_a_streams_opening_and_appends_add_up_to_the_window_at_its_last_bar():
    stream = SessionRequestFactory.from_dataset("eurusd_1h", WEEKLY, n=200, session="s", seed=1)
    fine_t = stream.opening["fine"]["t"] + [t for a in stream.appends for t in a["fine"]["t"]]
    coarse_t = stream.opening["coarse"]["t"] + [t for a in stream.appends for t in a["coarse"]["t"]]
    assert stream.opening["session"] == "s" and all(len(a["fine"]["t"]) == 1 for a in stream.appends)
    assert any(a["coarse"]["t"] for a in stream.appends)  # 200 hours span a week's close
    bars = load_dataset("eurusd_1h").bars
    last = int(np.searchsorted(bars.t, fine_t[-1]))
    coarse, fine = RequestWindows(bars, "1w", WEEKLY.needs).at(last)
    assert fine_t[-10:] == fine.t.tolist() and coarse_t[-3:] == coarse.t.tolist()
    assert np.all(np.diff(fine_t) > 0) and np.all(np.diff(coarse_t) > 0)


def test_the_first_bar_with_a_whole_window_is_where_windows_start():
    bars = load_dataset("eurusd_1h").bars
    windows = RequestWindows(bars, "1w", (3, 10))
    assert windows.at(windows.first - 1) is None and windows.at(windows.first) is not None


def test_a_dataset_of_another_timeframe_than_the_models_is_refused_naming_both():
    import pytest

    from dualhrq.errors import DataError

    with pytest.raises(DataError, match=r"--dataset: goog_1d holds 1d bars, but the model was trained on 1h bars"):
        RealWindows.from_dataset("goog_1d", ModelInputs((3, 10), "1d", "1h"), pool=2)
