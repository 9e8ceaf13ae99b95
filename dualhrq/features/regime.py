"""Regime features, one row per fine bar: the state of the market the model conditions on.

Each row reads the REGIME_WINDOW fine bars ending there (noise- and jump-robust volatility, trend, return
distribution, liquidity, volume) and the coarse bars visible then (prior close, the market-rule states, the
coarse trend, volatility and position in the coarse range).
"""

from __future__ import annotations

import numpy as np

from dualhrq.data.bars import Bars
from dualhrq.data.resample import visible_counts
from dualhrq.features.columns import Columns, fill
from dualhrq.features.estimators import (
    amihud_from_sums,
    bipower_from_sums,
    parkinson_from_sums,
    tsrv_from_sums,
    tsrv_k,
)
from dualhrq.features.market import luld_band_distance, ssr_triggered
from dualhrq.features.rolling import (
    f64,
    known_at,
    lag,
    ratio,
    stacked_windows,
    tail_rows,
    window_mean,
    window_sums,
    windows,
    with_previous,
    zscore,
)

REGIME_WINDOW = 48  # fine bars
REGIME_COARSE_WINDOW = 20  # coarse bars
REGIME_WARMUP = REGIME_WINDOW  # fine rows before this index are NaN
REGIME_COARSE_WARMUP = REGIME_COARSE_WINDOW + 1  # coarse bars needed: the window's returns need one more close
_QUARTER = REGIME_WINDOW // 4  # the window's last quarter: recent volatility and volume against the whole


class RegimeWindows:
    """What the regime columns are computed from, each window reduced once per call: the sums and moments of
    the fine window ending at each computed row, and the coarse bars visible then. Rule 201's "day" is the
    coarse period here: exact for intraday fine bars with daily coarse ones, a weekly analogue for daily ->
    weekly. Same-period lows are looked for within the fine window."""

    def __init__(self, fine: Bars, coarse: Bars, last: int | None = None) -> None:
        """For every fine bar (``last`` None) or the last ``last`` fine bars."""
        w, q, wc = REGIME_WINDOW, _QUARTER, REGIME_COARSE_WINDOW
        h, l, c, v = f64(fine.h), f64(fine.l), f64(fine.c), f64(fine.v)  # noqa: E741
        n = len(c)
        m = tail_rows(n, last)
        self.n, self.m = n, m
        tail = slice(n - m, n)
        lc = np.log(c)
        r = with_previous(np.subtract, lc)
        r2 = r * r
        a = np.abs(r)
        log_range = np.log(h / l)
        lv = np.log1p(v)
        k_slow = tsrv_k(w)
        slow = lc - lag(lc, k_slow)  # the K-spaced returns whose squares TSRV's slow scale sums

        win = stacked_windows(w, m, r, r2, a, c * v, log_range * log_range, lv)
        rw, lvw = win[0], win[5]
        self.sum_r, self.rv, self.sum_abs_r, self.sum_dollar_volume, self.sum_sq_range, sum_lv = window_sums(win)
        mean_r = self.sum_r / w
        self.mean_log_volume = sum_lv / w
        # Second pass over the same windows: the central moments of the returns, the deviations of log volume.
        d = rw - mean_r[:, None]
        dl = lvw - self.mean_log_volume[:, None]
        central = np.empty((4, m, w))
        np.square(d, out=central[0])
        np.power(d, 3, out=central[1])
        np.power(d, 4, out=central[2])
        np.multiply(dl, dl, out=central[3])
        self.m2, self.m3, self.m4 = window_mean(central[:3])
        self.log_volume, self.sum_sq_dev_log_volume = lvw[:, -1], window_sums(central[3])
        # adjacent products of returns (autocorrelation) and of absolute returns (bipower variation)
        self.sum_r_products, sum_abs_products = window_sums(
            stacked_windows(w - 1, m, with_previous(np.multiply, r), with_previous(np.multiply, a)))
        self.quarter_rv, self.quarter_log_volume = window_sums(stacked_windows(q, m, r2, lv))
        self.tsrv = tsrv_from_sums(self.rv, window_sums(windows(slow * slow, w + 1 - k_slow, m)), w, k_slow)
        self.bpv = bipower_from_sums(sum_abs_products, w)
        self.rv_vol = np.sqrt(self.rv)
        self.window_return = lc[tail] - lag(lc, w, m)

        # Coarse side: per coarse bar, then read at the last coarse bar visible at each fine bar.
        k = visible_counts(coarse.t, fine.t)  # every fine bar's: the same-period test looks back a whole window
        k_tail = k[tail]
        last_coarse = k_tail - 1
        cc, cl, ch = f64(coarse.c), f64(coarse.l), f64(coarse.h)
        lcc = np.log(cc)
        coarse_trig = np.empty(len(cc))
        coarse_trig[:1] = np.nan
        coarse_trig[1:] = ssr_triggered(cl[1:], cc[:-1])
        # Coarse windows only from the earliest coarse bar a computed row reads (serving: the last one).
        c_rows = len(cc) - max(int(last_coarse.min()), 0) if len(last_coarse) and len(cc) else len(cc)
        at = last_coarse - (len(cc) - c_rows)  # index into those rows (< 0: no coarse bar known yet)
        coarse_low = np.minimum.reduce(windows(cl, wc, c_rows), axis=1)
        coarse_high = np.maximum.reduce(windows(ch, wc, c_rows), axis=1)
        coarse_vol = np.sqrt(window_sums(windows(with_previous(np.subtract, lcc) ** 2, wc, c_rows)))
        self.prior_close = known_at(cc, last_coarse)
        self.coarse_low = known_at(coarse_low, at)
        self.coarse_high = known_at(coarse_high, at)
        self.coarse_vol = known_at(coarse_vol, at)
        self.coarse_mom = known_at(lcc - lag(lcc, wc), last_coarse)
        self.ssr_last_period = known_at(coarse_trig, last_coarse)  # the last closed coarse bar triggered
        # Lows since the last coarse close: fine bars in the window that saw the same coarse bars as bar i.
        same_period = windows(k.astype(np.float64), w, m) == k_tail[:, None]
        self.period_low = np.minimum.reduce(np.where(same_period, windows(l, w, m), np.inf), axis=1)
        self.close, self.previous_close = c[tail], lag(c, 1, m)


def _ssr_active(x: RegimeWindows) -> np.ndarray:
    """1 while Rule 201 would be active: triggered in this coarse period or the previous one."""
    ssr = np.maximum(ssr_triggered(x.period_low, x.prior_close), x.ssr_last_period)
    ssr[np.isnan(x.prior_close) | np.isnan(x.ssr_last_period)] = np.nan
    return ssr


REGIME_COLUMNS: Columns[RegimeWindows] = {
    "rv_vol": lambda x: x.rv_vol,  # sqrt(RV) over the fine window
    # sqrt(max(TSRV, 0)): the volatility with microstructure noise removed
    "tsrv_vol": lambda x: np.sqrt(np.maximum(x.tsrv, 0.0)),
    "bpv_vol": lambda x: np.sqrt(x.bpv),  # sqrt(BPV): the volatility without jumps
    # 1 - BPV/RV clipped to [0, 1]: the part of the variance due to jumps
    "jump_share": lambda x: np.minimum(np.maximum(1.0 - ratio(x.bpv, x.rv, 1.0), 0.0), 1.0),
    # per-bar volatility of the last quarter of the window / of the whole window
    "vol_ratio": lambda x: np.sqrt(ratio(x.quarter_rv / _QUARTER, x.rv / REGIME_WINDOW, 1.0)),
    "range_vol": lambda x: np.sqrt(parkinson_from_sums(x.sum_sq_range)),  # sqrt(Parkinson variance)
    "trend_z": lambda x: ratio(x.window_return, x.rv_vol, 0.0),  # window return / sqrt(RV): the drift's t-stat
    # |sum r| / sum |r|: 1 = straight trend, 0 = pure back-and-forth
    "efficiency": lambda x: ratio(np.abs(x.sum_r), x.sum_abs_r, 0.0),
    # lag-1 autocorrelation of returns (uncentred): < 0 is mean reversion
    "autocorr": lambda x: ratio(x.sum_r_products, x.rv, 0.0),
    "skew": lambda x: ratio(x.m3, x.m2**1.5, 0.0),  # skewness of returns
    "kurtosis": lambda x: ratio(x.m4, x.m2**2, 3.0) - 3.0,  # excess kurtosis of returns
    "log_amihud": lambda x: amihud_from_sums(x.sum_abs_r, x.sum_dollar_volume),  # Amihud illiquidity
    # last bar's log volume, z-scored in the window
    "volume_z": lambda x: zscore(x.log_volume, x.mean_log_volume, x.sum_sq_dev_log_volume, REGIME_WINDOW),
    # mean log volume of the last quarter minus that of the whole window
    "volume_trend": lambda x: x.quarter_log_volume / _QUARTER - x.mean_log_volume,
    "ssr_active": _ssr_active,
    # log(c / prior close): the prior close is the last closed coarse bar's
    "prior_close_ret": lambda x: np.log(x.close / x.prior_close),
    # luld_band_distance of the close, reference = previous fine close, tier 1
    "luld_distance": lambda x: luld_band_distance(x.close, x.previous_close, x.prior_close),
    "coarse_mom": lambda x: x.coarse_mom,  # log return over the last REGIME_COARSE_WINDOW closed coarse bars
    "coarse_vol": lambda x: x.coarse_vol,  # sqrt(RV) of those coarse bars
    # (c - their lowest low) / (their highest high - lowest low)
    "coarse_position": lambda x: ratio(x.close - x.coarse_low, x.coarse_high - x.coarse_low, 0.5),
}
REGIME_FEATURES: tuple[str, ...] = tuple(REGIME_COLUMNS)


def regime_features(fine: Bars, coarse: Bars, last: int | None = None) -> np.ndarray:
    """[len(fine), len(REGIME_FEATURES)] float64 (or its last ``last`` rows), each row from the fine window
    ending there and the coarse bars visible then (see `RegimeWindows`)."""
    x = RegimeWindows(fine, coarse, last)
    out = fill(np.empty((x.m, len(REGIME_COLUMNS))), REGIME_COLUMNS, x)
    out[:max(REGIME_WARMUP - (x.n - x.m), 0)] = np.nan  # the fine window's first rows see part of it only
    return out
