"""Per-bar features, one row per bar of a timeframe: the coarse (H) tokens and most of each fine (L) token.

Each row describes its bar (returns, range, wicks) and the BAR_WINDOW bars ending there (volatility,
momentum, liquidity, z-scores of the close and the volume), so it needs BAR_WARMUP bars of history.
"""

from __future__ import annotations

import math

import numpy as np

from dualhrq.data.bars import Bars
from dualhrq.features.columns import Columns, fill
from dualhrq.features.estimators import amihud_from_sums, bipower_from_sums, parkinson_from_sums
from dualhrq.features.rolling import (
    f64,
    lag,
    ratio,
    stacked_windows,
    tail_rows,
    window_sums,
    windows,
    with_previous,
    zscore,
)

BAR_WINDOW = 20
BAR_WARMUP = BAR_WINDOW  # rows before this index lack history (NaN)


class BarWindows:
    """What the bar columns are computed from, each window reduced once per call: the computed rows' bars,
    and the sums over the BAR_WINDOW bars ending at each of them."""

    def __init__(self, bars: Bars, last: int | None = None) -> None:
        """For every bar (``last`` None) or the last ``last`` bars."""
        o, h, l, c, v = f64(bars.o), f64(bars.h), f64(bars.l), f64(bars.c), f64(bars.v)  # noqa: E741
        w = BAR_WINDOW
        n = len(c)
        m = tail_rows(n, last)
        self.m = m
        lc = np.log(c)
        r = with_previous(np.subtract, lc)
        a = np.abs(r)
        log_range = np.log(h / l)
        lv = np.log1p(v)
        # One reduction for every series a window column sums; the z-scores' series last, to centre them.
        win = stacked_windows(w, m, r * r, log_range * log_range, a, c * v, lc, lv)
        s = window_sums(win)
        self.sum_r2, self.sum_sq_range, self.sum_abs_r, self.sum_dollar_volume = s[:4]
        mean = s[4:] / w
        dev = win[4:] - mean[..., None]
        self.meanrev_z, self.volume_z = zscore(win[4:, :, -1], mean, window_sums(dev * dev), w)
        self.sum_abs_products = window_sums(windows(with_previous(np.multiply, a), w - 1, m))
        self.rv = np.sqrt(self.sum_r2)

        tail = slice(n - m, n)
        self.o, self.h, self.l, self.c = o[tail], h[tail], l[tail], c[tail]  # noqa: E741
        self.log_close_all = lc  # the lagged columns read back before the computed rows
        self.log_close, self.r, self.log_range = lc[tail], r[tail], log_range[tail]

    def log_close_ago(self, k: int) -> np.ndarray:
        """log c of k bars before each computed row (NaN before the series starts)."""
        return lag(self.log_close_all, k, self.m)


BAR_COLUMNS: Columns[BarWindows] = {
    "ret": lambda x: x.r,  # log(c / previous c)
    "gap": lambda x: np.log(x.o) - x.log_close_ago(1),  # log(o / previous c)
    "body": lambda x: np.log(x.c / x.o),  # log(c / o)
    "range": lambda x: x.log_range,  # log(h / l)
    "upper_wick": lambda x: np.log(x.h / np.maximum(x.o, x.c)),  # log(h / max(o, c))
    "lower_wick": lambda x: np.log(np.minimum(x.o, x.c) / x.l),  # log(min(o, c) / l)
    "volume_z": lambda x: x.volume_z,  # z-score of log(1 + v) over the window
    "mom_5": lambda x: x.log_close - x.log_close_ago(5),  # log(c / c 5 bars ago)
    "mom_20": lambda x: x.log_close - x.log_close_ago(20),  # log(c / c 20 bars ago)
    # z-score of log c within the window: stretched away from its mean, it tends to revert
    "meanrev_z": lambda x: x.meanrev_z,
    "rv": lambda x: x.rv,  # sqrt(realized variance) over the window
    "bpv": lambda x: np.sqrt(bipower_from_sums(x.sum_abs_products, BAR_WINDOW)),  # sqrt(bipower variation)
    "range_vol": lambda x: np.sqrt(parkinson_from_sums(x.sum_sq_range)),  # sqrt(Parkinson variance)
    "ret_z": lambda x: ratio(x.r, x.rv / math.sqrt(BAR_WINDOW), 0.0),  # ret in units of per-bar volatility
    "log_amihud": lambda x: amihud_from_sums(x.sum_abs_r, x.sum_dollar_volume),  # Amihud illiquidity
    "close_loc": lambda x: ratio(x.c - x.l, x.h - x.l, 0.5),  # where the close sits in the range: 0 low, 1 high
}
BAR_FEATURES: tuple[str, ...] = tuple(BAR_COLUMNS)


def bar_features(bars: Bars, last: int | None = None) -> np.ndarray:
    """[n, len(BAR_FEATURES)] float64 (or its last ``last`` rows); rows before BAR_WARMUP are NaN.

    ``last`` None computes a row per bar (training, over a whole history), ``last=m`` only the last m rows
    (serving); the rows are the same either way."""
    x = BarWindows(bars, last)
    return fill(np.empty((x.m, len(BAR_COLUMNS))), BAR_COLUMNS, x)
