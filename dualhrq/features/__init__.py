"""Every feature the model sees, computed one way for training and serving (vectorised numpy).

Causality and train/serve parity rest on one property: every feature of row i is a function of a FIXED
number of bars ending at i (no expanding sums, no exponential averages). Row i is therefore the same,
bit for bit, whether it is computed over the whole history or over just the last `needs()` bars a request
carries. Rows without enough history are NaN; callers keep only complete rows.

Returns are log returns. Estimators reduce over the last axis, so the same function serves one long window
(the estimator tests) and a rolling window (a view [n, w] over the series).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dualhrq.data.bars import Bars
from dualhrq.data.market_rules import LULD, SSR
from dualhrq.data.resample import visible_counts
from dualhrq.errors import ConfigurationError, DataError, ModelLoadError

MU1 = math.sqrt(2.0 / math.pi)  # E|Z| for a standard normal Z: the bipower scale
_EPS = 1e-12  # keeps log-ratios finite for windows without movement or without volume


# ---------------------------------------------------------------- rolling helpers
# Training computes every row of a long history; serving computes the newest rows of the ~70 bars a request
# carries, where numpy's fixed cost per call, not the arithmetic, is the price. So the feature functions
# take ``last`` (compute only that many trailing rows), work on per-bar series and reduce many series'
# windows in one call (`_stacked_windows`), and use bare ufuncs rather than the wrappers (np.diff, np.std,
# np.select, ...) that spend longer checking arguments than computing on arrays this small. A window's sum
# is the same pairwise sum of the same contiguous values however many rows or series are reduced with it,
# so every row comes out bit for bit the same whichever rows are computed (a test holds serving to that).


def _f64(x: np.ndarray) -> np.ndarray:
    """A C-contiguous float64 array (no copy when it already is one): the window views read its memory."""
    return np.ascontiguousarray(x, np.float64)


def _rows(n: int, last: int | None) -> int:
    """How many trailing rows of an n-bar series to compute: all (None) or the last ``last``."""
    if last is None:
        return n
    if last < 1:
        raise ValueError(f"last: must be >= 1 (rows to compute), got {last}")
    return min(last, n)


def _stacked_windows(w: int, m: int, *series: np.ndarray) -> np.ndarray:
    """[len(series), m, w]: for each series (same length n), the window of w values ending at each of its last
    m rows, oldest first, NaN where a window reaches before the series starts. A strided view over one fresh
    buffer (never write to it), so a single reduction serves every series."""
    n = len(series[0])
    first = n - m - w + 1  # the earliest value any of the windows reads
    pad = max(-first, 0)
    buf = np.empty((len(series), pad + n - max(first, 0)))
    buf[:, :pad] = np.nan
    for row, s in zip(buf, series):
        row[pad:] = s[max(first, 0):]
    return np.ndarray((len(series), m, w), np.float64, buf, strides=(buf.strides[0], 8, 8))


def _windows(x: np.ndarray, w: int, rows: int | None = None) -> np.ndarray:
    """[rows, w]: the windows of one series (see `_stacked_windows`); rows default to every row."""
    return _stacked_windows(w, len(x) if rows is None else rows, x)[0]


def _sums(windows: np.ndarray) -> np.ndarray:
    """Sum over the last axis (np.sum's result without its wrapper)."""
    return np.add.reduce(windows, axis=-1)


def _mean(windows: np.ndarray) -> np.ndarray:
    """Mean over the last axis, computed as np.mean does (sum, then divide by the count)."""
    return np.add.reduce(windows, axis=-1) / windows.shape[-1]


def _lag(x: np.ndarray, k: int, rows: int | None = None) -> np.ndarray:
    """The last ``rows`` values (default: all) of x shifted k places later; NaN before the series starts."""
    n = len(x)
    m = n if rows is None else rows
    lo = n - m - k  # index into x of the first row's value
    if lo >= 0:
        return x[lo:lo + m]
    out = np.full(m, np.nan)
    if m + lo > 0:
        out[-lo:] = x[:m + lo]
    return out


def _with_previous(op: np.ufunc, x: np.ndarray) -> np.ndarray:
    """out[i] = op(x[i], x[i-1]), out[0] NaN, without np.diff's overhead: differences (np.subtract) and the
    adjacent products that bipower variation and autocorrelation sum (np.multiply)."""
    out = np.empty(len(x))
    out[:1] = np.nan
    op(x[1:], x[:-1], out=out[1:])
    return out


def _ratio(a: np.ndarray, b: np.ndarray, fill: float) -> np.ndarray:
    """a / b for a denominator b >= 0; ``fill`` where b == 0 (a flat window); NaN where a or b is NaN."""
    zero = b == 0
    if not np.count_nonzero(zero):  # the usual case: a plain division
        return a / b
    out = np.full(np.broadcast_shapes(np.shape(a), np.shape(b)), fill)
    return np.divide(a, b, out=out, where=~zero | np.isnan(a))  # NaN / 0 is a quiet NaN: no warning


def _zscore(last: np.ndarray, mean: np.ndarray, sum_sq_dev: np.ndarray, w: int) -> np.ndarray:
    """Z-score of a window's last value from its mean and its sum of squared deviations (0 for a constant
    window); the std is np.std's (population), computed the way numpy computes it."""
    return _ratio(last - mean, np.sqrt(sum_sq_dev / w), 0.0)


def _zscore_last(win: np.ndarray) -> np.ndarray:
    """Z-score of each window's last value within the window [..., w] (0 for a constant window)."""
    mean = _mean(win)
    d = win - mean[..., None]
    return _zscore(win[..., -1], mean, _sums(d * d), win.shape[-1])


def _at(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """x[idx] with NaN where idx < 0 (nothing known yet)."""
    ok = idx >= 0
    if np.count_nonzero(ok) == len(idx):
        return x[idx]
    out = np.full(idx.shape, np.nan)
    out[ok] = x[idx[ok]]
    return out


def log_returns(close: np.ndarray) -> np.ndarray:
    """r[i] = log(c[i] / c[i-1]); r[0] is NaN."""
    return _with_previous(np.subtract, np.log(close))


# ---------------------------------------------------------------- estimators (reduce over the last axis)
# Each is a reduction and a formula on its sums; the rolling features reduce many windows at once and apply
# the same formulas (the `_from_sums` helpers) to the sums.


def realized_variance(r: np.ndarray) -> np.ndarray:
    """RV = sum of squared returns."""
    return _sums(r * r)


def bipower_variation(r: np.ndarray) -> np.ndarray:
    """BPV = mu1^-2 * n/(n-1) * sum |r_i||r_{i-1}| (Barndorff-Nielsen & Shephard 2004): integrated variance
    without the jumps, since a single jump enters only products with its small neighbours."""
    a = np.abs(r)
    return _bipower_from_sums(_sums(a[..., 1:] * a[..., :-1]), r.shape[-1])


def _bipower_from_sums(sum_abs_products: np.ndarray, n: int) -> np.ndarray:
    return (n / (n - 1)) * sum_abs_products / MU1**2


def _tsrv_k(n: int) -> int:
    return max(2, round(n ** (2 / 3)))


def tsrv(log_price: np.ndarray, k: int | None = None) -> np.ndarray:
    """Two-scale realized variance (Zhang, Mykland & Ait-Sahalia 2005) from n+1 log prices on the last axis.

    RV at the slow scale (K-spaced returns, averaged over the K offsets) minus the microstructure-noise bias
    that the all-returns RV measures, with the small-sample correction (1 - nbar/n)^-1, nbar = (n-K+1)/K.
    K defaults to round(n^(2/3)), the rate-optimal order; the best constant depends on the noise-to-signal
    ratio, K* = (12 noise^4 / integrated quarticity)^(1/3) n^(2/3), so pass k when that is known. On short
    noisy windows TSRV can come out negative.
    """
    n = log_price.shape[-1] - 1
    k = _tsrv_k(n) if k is None else k
    if not 2 <= k < n:
        raise ValueError(f"tsrv: k must be in [2, {n - 1}] for {n} returns, got {k}")
    rv_all = realized_variance(log_price[..., 1:] - log_price[..., :-1])
    return _tsrv_from_sums(rv_all, realized_variance(log_price[..., k:] - log_price[..., :-k]), n, k)


def _tsrv_from_sums(rv_all: np.ndarray, sum_slow_sq: np.ndarray, n: int, k: int) -> np.ndarray:
    """TSRV from the all-returns RV and the sum of squared K-spaced returns over n returns."""
    nbar = (n - k + 1) / k
    return (sum_slow_sq / k - (nbar / n) * rv_all) / (1 - nbar / n)


def realized_vol(close: np.ndarray, window: int) -> np.ndarray:
    """sqrt(RV) of the last ``window`` returns at each bar (NaN until there are that many)."""
    return np.sqrt(realized_variance(_windows(log_returns(_f64(close)), window)))


def _parkinson_from_sums(sum_sq_log_range: np.ndarray) -> np.ndarray:
    return sum_sq_log_range / (4 * math.log(2))


def _amihud_from_sums(sum_abs_returns: np.ndarray, sum_dollar_volume: np.ndarray) -> np.ndarray:
    return np.log((sum_abs_returns + _EPS) / (sum_dollar_volume + _EPS))


# ---------------------------------------------------------------- market rules as features
# The thresholds come from the compliance gate's rule tables (dualhrq.data.market_rules), read vectorised.


def ssr_triggered(price: np.ndarray, prior_close: np.ndarray) -> np.ndarray:
    """Rule 201's trigger: a price at or below 90% of the prior close."""
    return price <= SSR.trigger_ratio * prior_close


def luld_half_width(reference: np.ndarray, prior_close: np.ndarray, tier: int = 1) -> np.ndarray:
    """Half the LULD band in price units: reference x the percentage the prior close selects (capped in
    dollars on the sub-$0.75 row), unrounded. Bars carry no clock time, so the open/close doubling is not
    applied: the feature measures the base band."""
    if tier not in (1, 2):
        raise ValueError(f"tier: must be 1 or 2, got {tier}")
    high, mid, low = LULD.above_high, LULD.middle, LULD.below_low
    above, within = prior_close > LULD.high_price, prior_close >= LULD.low_price
    # Nested where: the first row that matches wins (np.select's rule, without its overhead).
    pct = np.where(above, high.tier1 if tier == 1 else high.tier2,
                   np.where(within, mid.tier1 if tier == 1 else mid.tier2, low.tier1 if tier == 1 else low.tier2))
    cap = np.where(above, high.cap or np.inf, np.where(within, mid.cap or np.inf, low.cap or np.inf))
    return np.where(np.isnan(prior_close), np.nan, np.minimum(reference * pct, cap))


def luld_band_distance(price: np.ndarray, reference: np.ndarray, prior_close: np.ndarray,
                       tier: int = 1) -> np.ndarray:
    """Distance from the price to the nearer LULD band as a fraction of the band's width: 0.5 at the
    reference, 0 on a band, negative outside it."""
    half = luld_half_width(reference, prior_close, tier)
    return (half - np.abs(price - reference)) / (2 * half)


# ---------------------------------------------------------------- per-bar features (one per timeframe)
#
# Every feature function takes ``last``: None computes a row per bar (training, over a whole history);
# ``last=m`` only the last m rows (serving). The rows are the same either way.

BAR_WINDOW = 20
BAR_FEATURES: tuple[str, ...] = (
    "ret",  # log(c / previous c)
    "gap",  # log(o / previous c)
    "body",  # log(c / o)
    "range",  # log(h / l)
    "upper_wick",  # log(h / max(o, c))
    "lower_wick",  # log(min(o, c) / l)
    "volume_z",  # z-score of log(1 + v) over the window
    "mom_5",  # log(c / c 5 bars ago)
    "mom_20",  # log(c / c 20 bars ago)
    "meanrev_z",  # z-score of log c within the window: stretched away from its mean, it tends to revert
    "rv",  # sqrt(realized variance) over the window
    "bpv",  # sqrt(bipower variation) over the window
    "range_vol",  # sqrt(Parkinson variance) over the window
    "ret_z",  # ret in units of the window's per-bar volatility
    "log_amihud",  # Amihud illiquidity over the window
    "close_loc",  # where the close sits in the bar's range, 0 = low, 1 = high
)
BAR_WARMUP = BAR_WINDOW  # rows before this index lack history (NaN)


def bar_features(bars: Bars, last: int | None = None) -> np.ndarray:
    """[n, len(BAR_FEATURES)] float64 (or its last ``last`` rows); rows before BAR_WARMUP are NaN."""
    o, h, l, c, v = _f64(bars.o), _f64(bars.h), _f64(bars.l), _f64(bars.c), _f64(bars.v)  # noqa: E741
    w = BAR_WINDOW
    n = len(c)
    m = _rows(n, last)
    lc = np.log(c)
    r = _with_previous(np.subtract, lc)
    a = np.abs(r)
    log_range = np.log(h / l)
    lv = np.log1p(v)
    win = _stacked_windows(w, m, r * r, log_range * log_range, a, c * v, lc, lv)
    s = _sums(win)  # rv, Parkinson, Amihud numerator and denominator, then the sums the z-scores centre on
    mean = s[4:] / w
    dev = win[4:] - mean[..., None]
    volume_z, meanrev_z = _zscore(win[4:, :, -1], mean, _sums(dev * dev), w)[::-1]
    rv = np.sqrt(s[0])
    tail = slice(n - m, n)
    ot, ht, lt, ct, lct, rt = o[tail], h[tail], l[tail], c[tail], lc[tail], r[tail]
    out = np.empty((m, len(BAR_FEATURES)))
    out[:, 0] = rt
    out[:, 1] = np.log(ot) - _lag(lc, 1, m)
    out[:, 2] = np.log(ct / ot)
    out[:, 3] = log_range[tail]
    out[:, 4] = np.log(ht / np.maximum(ot, ct))
    out[:, 5] = np.log(np.minimum(ot, ct) / lt)
    out[:, 6] = volume_z
    out[:, 7] = lct - _lag(lc, 5, m)
    out[:, 8] = lct - _lag(lc, 20, m)
    out[:, 9] = meanrev_z
    out[:, 10] = rv
    out[:, 11] = np.sqrt(_bipower_from_sums(_sums(_windows(_with_previous(np.multiply, a), w - 1, m)), w))
    out[:, 12] = np.sqrt(_parkinson_from_sums(s[1]))
    out[:, 13] = _ratio(rt, rv / math.sqrt(w), 0.0)
    out[:, 14] = _amihud_from_sums(s[2], s[3])
    out[:, 15] = _ratio(ct - lt, ht - lt, 0.5)
    return out


# ---------------------------------------------------------------- regime features (20 per fine bar)

REGIME_WINDOW = 48  # fine bars
REGIME_COARSE_WINDOW = 20  # coarse bars
REGIME_FEATURES: tuple[str, ...] = (
    "rv_vol",  # sqrt(RV) over the fine window
    "tsrv_vol",  # sqrt(max(TSRV, 0)): the volatility with microstructure noise removed
    "bpv_vol",  # sqrt(BPV): the volatility without jumps
    "jump_share",  # 1 - BPV/RV clipped to [0, 1]: the part of the variance due to jumps
    "vol_ratio",  # per-bar volatility of the last quarter of the window / of the whole window
    "range_vol",  # sqrt(Parkinson variance) over the window
    "trend_z",  # window return / sqrt(RV): a t-statistic of the drift
    "efficiency",  # |sum r| / sum |r|: 1 = straight trend, 0 = pure back-and-forth
    "autocorr",  # lag-1 autocorrelation of returns (uncentred): < 0 is mean reversion
    "skew",  # skewness of returns
    "kurtosis",  # excess kurtosis of returns
    "log_amihud",  # Amihud illiquidity over the window
    "volume_z",  # last bar's log volume, z-scored in the window
    "volume_trend",  # mean log volume of the last quarter minus that of the whole window
    "ssr_active",  # 1 while Rule 201 would be active (triggered this coarse period, or in the previous one)
    "prior_close_ret",  # log(c / prior close): the prior close is the last closed coarse bar's
    "luld_distance",  # luld_band_distance of the close, reference = previous fine close, tier 1
    "coarse_mom",  # log return over the last REGIME_COARSE_WINDOW closed coarse bars
    "coarse_vol",  # sqrt(RV) of those coarse bars
    "coarse_position",  # (c - their lowest low) / (their highest high - lowest low)
)
REGIME_WARMUP = REGIME_WINDOW  # fine rows before this index are NaN
REGIME_COARSE_WARMUP = REGIME_COARSE_WINDOW + 1  # coarse bars needed: the window's returns need one more close


def regime_features(fine: Bars, coarse: Bars, last: int | None = None) -> np.ndarray:
    """[len(fine), 20] float64 (REGIME_FEATURES; or its last ``last`` rows), each row from the fine window
    ending there and the coarse bars visible then. Rule 201's "day" is the coarse period here: exact for
    intraday fine bars with daily coarse ones, a weekly analogue for daily -> weekly. Same-period lows are
    looked for within the fine window."""
    w, q, wc = REGIME_WINDOW, REGIME_WINDOW // 4, REGIME_COARSE_WINDOW
    h, l, c, v = _f64(fine.h), _f64(fine.l), _f64(fine.c), _f64(fine.v)  # noqa: E741
    n = len(c)
    m = _rows(n, last)
    tail = slice(n - m, n)
    ct = c[tail]
    lc = np.log(c)
    r = _with_previous(np.subtract, lc)
    r2 = r * r
    a = np.abs(r)
    log_range = np.log(h / l)
    lv = np.log1p(v)
    k_slow = _tsrv_k(w)
    slow = lc - _lag(lc, k_slow)  # the K-spaced returns whose squares TSRV's slow scale sums

    win = _stacked_windows(w, m, r, r2, a, c * v, log_range * log_range, lv)
    rw, lvw = win[0], win[5]
    s = _sums(win)  # sum r, RV, sum |r|, dollar volume, Parkinson, log volume
    rv, mean_r, mean_lv = s[1], s[0] / w, s[5] / w
    # Second pass over the same windows: the central moments of the returns, the deviations of log volume.
    d = rw - mean_r[:, None]
    dl = lvw - mean_lv[:, None]
    central = np.empty((4, m, w))
    np.square(d, out=central[0])
    np.power(d, 3, out=central[1])
    np.power(d, 4, out=central[2])
    np.multiply(dl, dl, out=central[3])
    m2, m3, m4 = _mean(central[:3])
    # adjacent products of returns (autocorrelation) and of absolute returns (bipower variation)
    adjacent = _sums(_stacked_windows(w - 1, m, _with_previous(np.multiply, r), _with_previous(np.multiply, a)))
    quarter = _sums(_stacked_windows(q, m, r2, lv))  # the window's last quarter: RV, log volume
    ts = _tsrv_from_sums(rv, _sums(_windows(slow * slow, w + 1 - k_slow, m)), w, k_slow)
    bpv = _bipower_from_sums(adjacent[1], w)
    rv_vol = np.sqrt(rv)

    # Coarse side: per coarse bar, then read at the last coarse bar visible at each fine bar.
    k = visible_counts(coarse.t, fine.t)  # every fine bar's: the same-period test looks back a whole window
    k_tail = k[tail]
    last_coarse = k_tail - 1
    cc, cl, ch = _f64(coarse.c), _f64(coarse.l), _f64(coarse.h)
    lcc = np.log(cc)
    coarse_trig = np.empty(len(cc))
    coarse_trig[:1] = np.nan
    coarse_trig[1:] = ssr_triggered(cl[1:], cc[:-1])
    # Coarse windows only from the earliest coarse bar a computed row reads (serving: the last one).
    c_rows = len(cc) - max(int(last_coarse.min()), 0) if len(last_coarse) and len(cc) else len(cc)
    at = last_coarse - (len(cc) - c_rows)  # index into those rows (< 0: no coarse bar known yet)
    coarse_low = np.minimum.reduce(_windows(cl, wc, c_rows), axis=1)
    coarse_high = np.maximum.reduce(_windows(ch, wc, c_rows), axis=1)
    coarse_vol = np.sqrt(_sums(_windows(_with_previous(np.subtract, lcc) ** 2, wc, c_rows)))
    prior_close = _at(cc, last_coarse)
    low_range = _at(coarse_low, at)
    trig = _at(coarse_trig, last_coarse)
    # Lows since the last coarse close: fine bars in the window that saw the same coarse bars as bar i.
    same_period = _windows(k.astype(np.float64), w, m) == k_tail[:, None]
    period_low = np.minimum.reduce(np.where(same_period, _windows(l, w, m), np.inf), axis=1)
    ssr = np.maximum(ssr_triggered(period_low, prior_close), trig)
    ssr[np.isnan(prior_close) | np.isnan(trig)] = np.nan

    out = np.empty((m, len(REGIME_FEATURES)))
    out[:, 0] = rv_vol
    out[:, 1] = np.sqrt(np.maximum(ts, 0.0))
    out[:, 2] = np.sqrt(bpv)
    out[:, 3] = np.minimum(np.maximum(1.0 - _ratio(bpv, rv, 1.0), 0.0), 1.0)
    out[:, 4] = np.sqrt(_ratio(quarter[0] / q, rv / w, 1.0))
    out[:, 5] = np.sqrt(_parkinson_from_sums(s[4]))
    out[:, 6] = _ratio(lc[tail] - _lag(lc, w, m), rv_vol, 0.0)
    out[:, 7] = _ratio(np.abs(s[0]), s[2], 0.0)
    out[:, 8] = _ratio(adjacent[0], rv, 0.0)
    out[:, 9] = _ratio(m3, m2**1.5, 0.0)
    out[:, 10] = _ratio(m4, m2**2, 3.0) - 3.0
    out[:, 11] = _amihud_from_sums(s[2], s[3])
    out[:, 12] = _zscore(lvw[:, -1], mean_lv, _sums(central[3]), w)
    out[:, 13] = quarter[1] / q - mean_lv
    out[:, 14] = ssr
    out[:, 15] = np.log(ct / prior_close)
    out[:, 16] = luld_band_distance(ct, _lag(c, 1, m), prior_close)
    out[:, 17] = _at(lcc - _lag(lcc, wc), last_coarse)
    out[:, 18] = _at(coarse_vol, at)
    out[:, 19] = _ratio(ct - low_range, _at(coarse_high, at) - low_range, 0.5)
    out[:max(REGIME_WARMUP - (n - m), 0)] = np.nan  # the fine window's first rows see part of it only
    return out


# ---------------------------------------------------------------- pattern features (the retrieval key)

PATTERN_SUMMARY: tuple[str, ...] = (
    "log_vol",  # log per-bar volatility of the window (floored at 1e-12 for a flat window)
    "trend_z",  # sum of the scaled returns / sqrt(window)
    "drawdown_z",  # deepest fall of the scaled cumulative return / sqrt(window)
    "recent_vol",  # RMS of the last quarter's scaled returns: recent vs window volatility
    "volume_z",  # last bar's log volume, z-scored in the window
)


def pattern_features(fine: Bars, window: int, last: int | None = None) -> np.ndarray:
    """[n, window + 5] (or its last ``last`` rows): the last ``window`` log returns divided by the window's
    per-bar RMS return (oldest first; scale-free, so shapes match across instruments and volatility regimes),
    then PATTERN_SUMMARY. Rows before index ``window`` are NaN."""
    if window < 4:
        raise ConfigurationError(f"patterns.window: must be >= 4, got {window}")
    c = _f64(fine.c)
    m = _rows(len(c), last)
    r = log_returns(c)
    win = _stacked_windows(window, m, r, np.log1p(_f64(fine.v)))
    rw, lvw = win[0], win[1]
    vol = np.sqrt(_mean(rw * rw))
    out = np.empty((m, window + 5))
    scaled = out[:, :window]
    scaled[...] = _ratio(rw, vol[:, None], 0.0)
    root = math.sqrt(window)
    cum = np.add.accumulate(scaled, axis=1)  # np.cumsum
    peak = np.maximum.accumulate(np.maximum(cum, 0.0), axis=1)
    out[:, window] = np.log(np.maximum(vol, 1e-12))
    out[:, window + 1] = cum[:, -1] / root
    out[:, window + 2] = np.maximum.reduce(peak - cum, axis=1) / root
    out[:, window + 3] = np.sqrt(_mean(scaled[:, -(window // 4):] ** 2))
    out[:, window + 4] = _zscore_last(lvw)
    return out


# ---------------------------------------------------------------- the label rule's position state
# The action labels (dualhrq.data.labels) depend on the position a holder of the rule has: the one the same
# rule opened a horizon ago. It is a function of past bars only, so the model gets it as two fine-token
# columns instead of having to re-derive it from returns and volatilities.

FLAT, LONG, SHORT = 0, 1, 2
UNKNOWN_STATE = -1  # not enough history for the rule's threshold a horizon ago
POSITION_FEATURES: tuple[str, ...] = ("state_long", "state_short")  # 1.0 while the label rule holds that side


@dataclass(frozen=True)
class PositionRule:
    """The label rule's thresholds: a move must pay the round-trip cost and clear ``vol_threshold`` horizon
    volatilities, theta_i = cost + k * sigma_i * sqrt(h) (sigma_i the per-bar realized volatility of the
    BAR_WINDOW returns up to i). The state at i is long if log(c[i] / c[i-h]) > theta_{i-h}, short if it is
    below -theta_{i-h}, else flat: exactly the forward return the rule saw a horizon ago."""

    horizon: int = 1
    cost_bps: float = 1.0
    vol_threshold: float = 0.5

    @classmethod
    def from_config(cls, data_cfg: Any) -> PositionRule:
        """From a DataConfig (label_horizon, cost_bps, action_vol_threshold)."""
        return cls(data_cfg.label_horizon, data_cfg.cost_bps, data_cfg.action_vol_threshold)

    @property
    def warmup(self) -> int:
        """Rows before this index have no state (the threshold a horizon ago needs BAR_WINDOW returns)."""
        return BAR_WINDOW + self.horizon

    def sigma(self, close: np.ndarray) -> np.ndarray:
        """[n] the volatility expected over the horizon at each bar (NaN until BAR_WINDOW returns exist)."""
        return realized_vol(close, BAR_WINDOW) / math.sqrt(BAR_WINDOW) * math.sqrt(self.horizon)

    def theta(self, close: np.ndarray) -> np.ndarray:
        """[n] the threshold a move must clear at each bar (NaN until BAR_WINDOW returns exist)."""
        return self.cost_bps * 1e-4 + self.vol_threshold * self.sigma(close)

    def states(self, close: np.ndarray, last: int | None = None) -> np.ndarray:
        """[n] (or the last ``last``) int64 FLAT/LONG/SHORT, UNKNOWN_STATE without enough history. Each row
        reads the bars from i - warmup to i only, so it is the same over a whole history or a short tail."""
        c = _f64(close)
        n, h = len(c), self.horizon
        m = _rows(n, last)
        c = c[max(0, n - m - self.warmup):]  # only the bars the rows read
        lc = np.log(c)
        theta = self.theta(c)
        back, then = np.full(len(c), np.nan), np.full(len(c), np.nan)
        back[h:] = lc[h:] - lc[:-h]
        then[h:] = theta[:-h]
        state = np.full(len(c), FLAT, np.int64)
        state[back > then] = LONG
        state[back < -then] = SHORT
        state[~(np.isfinite(back) & np.isfinite(then))] = UNKNOWN_STATE
        return state[len(c) - m:]


def position_features(close: np.ndarray, rule: PositionRule, last: int | None = None) -> np.ndarray:
    """[n, 2] float64 (POSITION_FEATURES, or the last ``last`` rows); NaN where the state is unknown."""
    state = rule.states(close, last)
    out = np.stack([state == LONG, state == SHORT], axis=1).astype(np.float64)
    out[state == UNKNOWN_STATE] = np.nan
    return out


def state_of(position_columns: np.ndarray) -> int:
    """The state a `position_features` row encodes (FLAT, LONG, SHORT): serving reads it off the columns it
    has computed anyway instead of computing the state again."""
    long, short = position_columns
    return LONG if long == 1.0 else SHORT if short == 1.0 else FLAT


FINE_FEATURES: tuple[str, ...] = BAR_FEATURES + POSITION_FEATURES  # what every fine token holds


def fine_features(bars: Bars, rule: PositionRule, last: int | None = None) -> np.ndarray:
    """[n, len(FINE_FEATURES)] float64: the bar features and the label rule's position state of each bar."""
    return np.concatenate([bar_features(bars, last), position_features(bars.c, rule, last)], axis=1)


# ---------------------------------------------------------------- normalisation


CLIP = 10.0  # normalised features are clipped to +-CLIP so one extreme bar cannot saturate a layer


@dataclass(frozen=True)
class ColumnStats:
    """Mean and std per column of one feature group, fitted on the training window only."""

    names: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, names: Sequence[str], rows: np.ndarray) -> ColumnStats:
        """Fit on the complete (all-finite) rows; a constant column gets std 1 so it normalises to 0."""
        if rows.ndim != 2 or rows.shape[1] != len(names):
            raise DataError(f"cannot fit feature statistics ({names[0]}, ...): rows of shape {rows.shape}, "
                            f"expected {len(names)} columns")
        rows = rows[np.isfinite(rows).all(axis=1)]
        if len(rows) < 2:
            raise DataError(f"cannot fit feature statistics ({names[0]}, ...): only {len(rows)} complete rows "
                            "in the training window")
        std = rows.std(axis=0)
        return cls(tuple(names), rows.mean(axis=0), np.where(std > 1e-12, std, 1.0))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(x - mean) / std, clipped to +-CLIP, float32; NaN stays NaN."""
        z = (x - self.mean) / self.std
        # np.clip's result, without its wrapper's cost (a request normalises three small groups)
        np.maximum(z, -CLIP, out=z)
        np.minimum(z, CLIP, out=z)
        return z.astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any], expect: Sequence[str], group: str) -> ColumnStats:
        """Restore and check against the names this code computes: a mismatch is train/serve skew."""
        try:
            names, mean, std = tuple(d["names"]), np.asarray(d["mean"], float), np.asarray(d["std"], float)
        except (KeyError, TypeError, ValueError) as e:
            raise ModelLoadError(f"feature_stats.{group}: malformed ({e})") from None
        if names != tuple(expect):
            raise ModelLoadError(f"feature_stats.{group}: fitted on features {list(names)}, but this code computes "
                                 f"{list(expect)}; refit (retrain) with the current feature set")
        if mean.shape != (len(names),) or std.shape != (len(names),):
            raise ModelLoadError(f"feature_stats.{group}: mean/std must hold {len(names)} values each")
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise ModelLoadError(f"feature_stats.{group}: mean must be finite and std finite and > 0")
        return cls(names, mean, std)


@dataclass(frozen=True)
class FeatureStats:
    """Normalisation of the three model-input groups; JSON-able so it travels in checkpoints and bundles.
    Pattern features are not here: they are scale-free and the pattern encoder standardises its own input."""

    coarse: ColumnStats
    fine: ColumnStats
    regime: ColumnStats

    @classmethod
    def fit(cls, coarse_rows: np.ndarray, fine_rows: np.ndarray, regime_rows: np.ndarray) -> FeatureStats:
        """Fit from raw feature rows of the TRAINING window only (incomplete rows are skipped)."""
        return cls(ColumnStats.fit(BAR_FEATURES, coarse_rows), ColumnStats.fit(FINE_FEATURES, fine_rows),
                   ColumnStats.fit(REGIME_FEATURES, regime_rows))

    def to_dict(self) -> dict[str, Any]:
        return {"coarse": self.coarse.to_dict(), "fine": self.fine.to_dict(), "regime": self.regime.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureStats:
        if not isinstance(d, dict) or set(d) != {"coarse", "fine", "regime"}:
            raise ModelLoadError("feature_stats: expected a mapping with keys coarse, fine, regime")
        return cls(ColumnStats.from_dict(d["coarse"], BAR_FEATURES, "coarse"),
                   ColumnStats.from_dict(d["fine"], FINE_FEATURES, "fine"),
                   ColumnStats.from_dict(d["regime"], REGIME_FEATURES, "regime"))
