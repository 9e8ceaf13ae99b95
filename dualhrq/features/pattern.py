"""Pattern features: the retrieval key that finds similar past windows in the pattern library.

A row is the last ``window`` log returns divided by the window's per-bar RMS return (oldest first; scale-free,
so shapes match across instruments and volatility regimes), then the PATTERN_SUMMARY columns.
"""

from __future__ import annotations

import math

import numpy as np

from dualhrq.data.bars import Bars
from dualhrq.errors import ConfigurationError
from dualhrq.features.columns import Columns, fill
from dualhrq.features.estimators import log_returns
from dualhrq.features.rolling import f64, ratio, stacked_windows, tail_rows, window_mean, zscore_last


class PatternWindows:
    """What the pattern columns are computed from, per computed row: the window's returns scaled by its RMS
    return, their running sum and its running peak, and the window's log volumes."""

    def __init__(self, fine: Bars, window: int, last: int | None = None) -> None:
        """For every fine bar (``last`` None) or the last ``last`` fine bars."""
        c = f64(fine.c)
        self.m = tail_rows(len(c), last)
        win = stacked_windows(window, self.m, log_returns(c), np.log1p(f64(fine.v)))
        rw, self.log_volume = win[0], win[1]
        self.vol = np.sqrt(window_mean(rw * rw))
        self.scaled = ratio(rw, self.vol[:, None], 0.0)
        self.cum = np.add.accumulate(self.scaled, axis=1)  # np.cumsum
        self.peak = np.maximum.accumulate(np.maximum(self.cum, 0.0), axis=1)
        self.window, self.root = window, math.sqrt(window)


PATTERN_COLUMNS: Columns[PatternWindows] = {
    # log per-bar volatility of the window (floored at 1e-12 for a flat window)
    "log_vol": lambda x: np.log(np.maximum(x.vol, 1e-12)),
    "trend_z": lambda x: x.cum[:, -1] / x.root,  # sum of the scaled returns / sqrt(window)
    # deepest fall of the scaled cumulative return / sqrt(window)
    "drawdown_z": lambda x: np.maximum.reduce(x.peak - x.cum, axis=1) / x.root,
    # RMS of the last quarter's scaled returns: recent vs window volatility
    "recent_vol": lambda x: np.sqrt(window_mean(x.scaled[:, -(x.window // 4):] ** 2)),
    "volume_z": lambda x: zscore_last(x.log_volume),  # last bar's log volume, z-scored in the window
}
PATTERN_SUMMARY: tuple[str, ...] = tuple(PATTERN_COLUMNS)


def pattern_features(fine: Bars, window: int, last: int | None = None) -> np.ndarray:
    """[n, window + len(PATTERN_SUMMARY)] (or its last ``last`` rows): the scaled returns, then
    PATTERN_SUMMARY. Rows before index ``window`` are NaN."""
    if window < 4:
        raise ConfigurationError(f"patterns.window: must be >= 4, got {window}")
    x = PatternWindows(fine, window, last)
    out = np.empty((x.m, window + len(PATTERN_COLUMNS)))
    out[:, :window] = x.scaled
    fill(out[:, window:], PATTERN_COLUMNS, x)
    return out
