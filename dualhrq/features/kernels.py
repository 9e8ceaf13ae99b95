"""The compiled row loops behind every feature family: one definition for training and serving.

Each kernel fills rows ``first`` .. n-1 of its family's matrix (``out[i - first]`` is row i), every row from the
fixed window of bars ending at it. Training asks for every row of a long history, serving for the newest rows
of a request's few bars, and a row comes out bit for bit the same either way: its arithmetic reads only its
window, in the same order (no running sums carried from row to row). A window that reaches before the first
bar makes its columns NaN; callers keep only complete rows.

Compiled by numba (``nogil``: features computed off the event loop, in the server's feature threads, run
beside it) and cached on disk; a row costs microseconds, where the same arithmetic as numpy calls on arrays this
small cost a millisecond per request. ``error_model="numpy"``: x / 0 is inf or NaN, as in numpy, not an
exception.

NOTE: numba's cache is keyed by this file alone, so every kernel and every helper a kernel calls lives here,
and what they read from elsewhere (window lengths, rule thresholds) comes in as arguments. A helper in
another module would be compiled into the cached kernels and not recompiled when only that module changed.
"""

from __future__ import annotations

import logging
import math

import numba
import numpy as np
from numba import njit

from dualhrq.errors import ConfigurationError

if numba.config.USING_SVML:  # dualhrq/__init__.py turns SVML off, unless numba was imported before it
    logging.getLogger(__name__).warning(
        "numba uses Intel SVML (numba was imported before dualhrq): feature rows computed over a history and over a "
        "request's bars may differ in the last bit; import dualhrq first or set NUMBA_DISABLE_INTEL_SVML=1")

MU1 = math.sqrt(2.0 / math.pi)  # E|Z| for a standard normal Z: the bipower scale
EPS = 1e-12  # keeps log-ratios finite for windows without movement or without volume
_LOG2X4 = 4.0 * math.log(2.0)  # Parkinson's range variance divides by 4 ln 2

_kernel = njit(cache=True, nogil=True, error_model="numpy")


def f64(x: np.ndarray) -> np.ndarray:
    """A C-contiguous float64 array (no copy when it already is one), as the kernels read it."""
    return np.ascontiguousarray(x, np.float64)


def tail_rows(n: int, last: int | None) -> int:
    """How many trailing rows of an n-bar series to compute: all (None) or the last ``last``; a family's kernel
    then starts at row n - tail_rows(n, last)."""
    if last is None:
        return n
    if last < 1:
        raise ConfigurationError(f"last: must be >= 1 (rows to compute), got {last}")
    return min(last, n)

BAR_WIDTH = 16
POSITION_WIDTH = 2
REGIME_WIDTH = 20
PATTERN_SUMMARY_WIDTH = 5
# The LULD band table one tier reads, as `luld_table` lays it out: the two price limits, then the band
# percentage and the dollar cap (inf: none) of the rows above, between and below them.
LULD_TABLE_WIDTH = 8


# ---------------------------------------------------------------- scalar helpers (numpy's semantics)


@_kernel
def _max(a: float, b: float) -> float:
    """np.maximum: NaN if either is NaN."""
    if a != a or b != b:
        return np.nan
    return a if a >= b else b


@_kernel
def _min(a: float, b: float) -> float:
    """np.minimum: NaN if either is NaN."""
    if a != a or b != b:
        return np.nan
    return a if a <= b else b


@_kernel
def _ratio(a: float, b: float, fill: float) -> float:
    """a / b for a denominator b >= 0; ``fill`` where b == 0 (a flat window); NaN where a or b is NaN."""
    if b == 0.0 and a == a:
        return fill
    return a / b


@_kernel
def _zscore(last: float, mean: float, sum_sq_dev: float, w: int) -> float:
    """Z-score of a window's last value from its mean and its sum of squared deviations (0: constant window);
    the std is the population one."""
    return _ratio(last - mean, math.sqrt(sum_sq_dev / w), 0.0)


@_kernel
def _wsum(x: np.ndarray, i: int, w: int) -> float:
    """Sum of the w values of x ending at i, oldest first; NaN when the window reaches before x[0]."""
    lo = i - w + 1
    if lo < 0:
        return np.nan
    s = 0.0
    for j in range(lo, i + 1):
        s += x[j]
    return s


@_kernel
def _wssd(x: np.ndarray, i: int, w: int, mean: float) -> float:
    """Sum of squared deviations from ``mean`` of the w values of x ending at i (NaN before x[0])."""
    lo = i - w + 1
    if lo < 0:
        return np.nan
    s = 0.0
    for j in range(lo, i + 1):
        d = x[j] - mean
        s += d * d
    return s


@_kernel
def _ago(x: np.ndarray, i: int, k: int) -> float:
    """x[i - k], NaN before x[0]."""
    return x[i - k] if i >= k else np.nan


@_kernel
def _previous(x: np.ndarray) -> np.ndarray:
    """out[j] = x[j-1]; out[0] NaN: the series one bar later, for returns and adjacent products."""
    out = np.empty(len(x))
    if len(x):
        out[0] = np.nan
        out[1:] = x[:-1]
    return out


@_kernel
def _diff(x: np.ndarray) -> np.ndarray:
    """out[j] = x[j] - x[j-1]; out[0] NaN."""
    return x - _previous(x)


@_kernel
def _bipower(sum_abs_products: float, n: int) -> float:
    """BPV of n returns from the sum of their n - 1 adjacent absolute products."""
    return (n / (n - 1)) * sum_abs_products / MU1**2


@_kernel
def _amihud(sum_abs_returns: float, sum_dollar_volume: float) -> float:
    """log Amihud illiquidity: absolute return per unit of dollar volume over the window."""
    return math.log((sum_abs_returns + EPS) / (sum_dollar_volume + EPS))


@_kernel
def _ssr_triggered(price: float, prior_close: float, trigger_ratio: float) -> bool:
    """Rule 201's trigger: a price at or below ``trigger_ratio`` x the prior close."""
    return price <= trigger_ratio * prior_close


@_kernel
def _half_width(reference: float, prior_close: float, table: np.ndarray) -> float:
    """Half the LULD band in price units: reference x the percentage the prior close selects, capped in dollars
    where the row has a cap; NaN without a prior close."""
    if prior_close != prior_close:
        return np.nan
    if prior_close > table[0]:
        pct, cap = table[2], table[5]
    elif prior_close >= table[1]:
        pct, cap = table[3], table[6]
    else:
        pct, cap = table[4], table[7]
    return min(reference * pct, cap)


@_kernel
def _band_distance(price: float, reference: float, prior_close: float, table: np.ndarray) -> float:
    """Distance from the price to the nearer LULD band as a fraction of the band's width: 0.5 at the
    reference, 0 on a band, negative outside it."""
    half = _half_width(reference, prior_close, table)
    return (half - abs(price - reference)) / (2 * half)


# ---------------------------------------------------------------- vectorised forms of the helpers


@_kernel
def luld_half_width_rows(reference: np.ndarray, prior_close: np.ndarray, table: np.ndarray,
                         out: np.ndarray) -> None:
    for j in range(len(out)):
        out[j] = _half_width(reference[j], prior_close[j], table)


@_kernel
def luld_band_distance_rows(price: np.ndarray, reference: np.ndarray, prior_close: np.ndarray,
                            table: np.ndarray, out: np.ndarray) -> None:
    for j in range(len(out)):
        out[j] = _band_distance(price[j], reference[j], prior_close[j], table)


# ---------------------------------------------------------------- bar features (dualhrq.features.bar)


@_kernel
def bar_rows(o: np.ndarray, h: np.ndarray, l: np.ndarray, c: np.ndarray, v: np.ndarray,  # noqa: E741
             first: int, w: int, out: np.ndarray) -> None:
    """BAR_FEATURES of rows first..n-1, each from its bar and the w bars ending there."""
    lc = np.log(c)
    r = _diff(lc)
    a = np.abs(r)
    r2 = r * r
    log_range = np.log(h / l)
    sq_range = log_range * log_range
    lv = np.log1p(v)
    dollar_volume = c * v
    abs_products = a * _previous(a)  # |r_j| |r_j-1|: bipower variation sums them
    for i in range(first, len(c)):
        row = out[i - first]
        rv = math.sqrt(_wsum(r2, i, w))
        mean_lc = _wsum(lc, i, w) / w
        mean_lv = _wsum(lv, i, w) / w
        row[0] = r[i]  # ret
        row[1] = math.log(o[i]) - _ago(lc, i, 1)  # gap
        row[2] = math.log(c[i] / o[i])  # body
        row[3] = log_range[i]  # range
        row[4] = math.log(h[i] / max(o[i], c[i]))  # upper_wick
        row[5] = math.log(min(o[i], c[i]) / l[i])  # lower_wick
        row[6] = _zscore(lv[i], mean_lv, _wssd(lv, i, w, mean_lv), w)  # volume_z
        row[7] = lc[i] - _ago(lc, i, 5)  # mom_5
        row[8] = lc[i] - _ago(lc, i, 20)  # mom_20
        row[9] = _zscore(lc[i], mean_lc, _wssd(lc, i, w, mean_lc), w)  # meanrev_z
        row[10] = rv  # rv
        row[11] = math.sqrt(_bipower(_wsum(abs_products, i, w - 1), w))  # bpv
        row[12] = math.sqrt(_wsum(sq_range, i, w) / _LOG2X4)  # range_vol
        row[13] = _ratio(r[i], rv / math.sqrt(w), 0.0)  # ret_z
        row[14] = _amihud(_wsum(a, i, w), _wsum(dollar_volume, i, w))  # log_amihud
        row[15] = _ratio(c[i] - l[i], h[i] - l[i], 0.5)  # close_loc


# ---------------------------------------------------------------- the label rule (dualhrq.features.position)


@_kernel
def _theta(r2: np.ndarray, j: int, w: int, horizon: int, cost_bps: float, vol_threshold: float) -> float:
    """The threshold a move over the horizon must clear at bar j: cost + k * sigma_j * sqrt(h), sigma_j the
    per-bar realized volatility of the w returns up to j (NaN until there are w)."""
    sigma = math.sqrt(_wsum(r2, j, w)) / math.sqrt(w) * math.sqrt(horizon)
    return cost_bps * 1e-4 + vol_threshold * sigma


@_kernel
def theta_rows(log_close: np.ndarray, first: int, w: int, horizon: int, cost_bps: float, vol_threshold: float,
               out: np.ndarray) -> None:
    """The rule's threshold at bars first..n-1 (``cost_bps`` 0, ``vol_threshold`` 1: sigma alone)."""
    r = _diff(log_close)
    r2 = r * r
    for j in range(first, len(log_close)):
        out[j - first] = _theta(r2, j, w, horizon, cost_bps, vol_threshold)


@_kernel
def state_rows(log_close: np.ndarray, first: int, w: int, horizon: int, cost_bps: float, vol_threshold: float,
               flat: int, long: int, short: int, unknown: int, out: np.ndarray) -> None:
    """The rule's position state at bars first..n-1: long if log(c[i] / c[i-h]) > theta_{i-h}, short if it is
    below -theta_{i-h}, else flat; unknown without the history for either."""
    r = _diff(log_close)
    r2 = r * r
    for i in range(first, len(log_close)):
        back = log_close[i] - _ago(log_close, i, horizon)
        then = _theta(r2, i - horizon, w, horizon, cost_bps, vol_threshold) if i >= horizon else np.nan
        if not (math.isfinite(back) and math.isfinite(then)):
            out[i - first] = unknown
        elif back > then:
            out[i - first] = long
        elif back < -then:
            out[i - first] = short
        else:
            out[i - first] = flat


@_kernel
def _position_flag(state: int, side: int, unknown: int) -> float:
    """A position column: 1.0 in its side's state, 0.0 in the others, NaN where the state is unknown."""
    if state == unknown:
        return np.nan
    return 1.0 if state == side else 0.0


@_kernel
def position_rows(states: np.ndarray, long: int, short: int, unknown: int, out: np.ndarray) -> None:
    """POSITION_FEATURES (state_long, state_short) of each state."""
    for i in range(len(states)):
        out[i, 0] = _position_flag(states[i], long, unknown)
        out[i, 1] = _position_flag(states[i], short, unknown)


@_kernel
def state_of_flags(flags: np.ndarray, long: int, short: int, flat: int) -> int:
    """The state a row of POSITION_FEATURES encodes: flat where neither flag is set (or the state was unknown)."""
    if flags[0] == 1.0:
        return long
    if flags[1] == 1.0:
        return short
    return flat


# ---------------------------------------------------------------- regime features (dualhrq.features.regime)


@_kernel
def regime_rows(fine_t: np.ndarray, h: np.ndarray, l: np.ndarray, c: np.ndarray, v: np.ndarray,  # noqa: E741
                coarse: tuple, first: int, rule: tuple, out: np.ndarray) -> None:
    """REGIME_FEATURES of fine rows first..n-1: the w fine bars ending at each and the coarse bars visible then
    (coarse.t <= its time); rows before w are NaN. ``coarse``: the coarse bars' (t, l, h, c); ``rule``: (w, the
    window's last quarter, the coarse window, TSRV's slow scale, the SSR trigger ratio, the LULD band table)."""
    coarse_t, coarse_l, coarse_h, coarse_c = coarse
    w, quarter, coarse_w, k_slow, ssr_ratio, luld = rule
    lc = np.log(c)
    r = _diff(lc)
    r2 = r * r
    a = np.abs(r)
    sq_range = np.log(h / l) ** 2
    lv = np.log1p(v)
    dollar_volume = c * v
    r_products = r * _previous(r)  # r_j r_j-1: the lag-1 autocorrelation sums them
    abs_products = a * _previous(a)  # |r_j| |r_j-1|: bipower variation sums them
    slow_sq = np.full(len(c), np.nan)  # squared K-spaced returns: TSRV's slow scale
    for j in range(k_slow, len(c)):
        slow_sq[j] = (lc[j] - lc[j - k_slow]) ** 2
    visible = np.searchsorted(coarse_t, fine_t, side="right")
    lcc = np.log(coarse_c)
    coarse_r2 = _diff(lcc) ** 2
    nbar = (w - k_slow + 1) / k_slow
    for i in range(first, len(c)):
        row = out[i - first]
        if i < w:
            row[:] = np.nan
            continue
        # the fine window
        sum_r, rv, sum_lv = _wsum(r, i, w), _wsum(r2, i, w), _wsum(lv, i, w)
        mean_r, mean_lv = sum_r / w, sum_lv / w
        m2 = m3 = m4 = 0.0
        for j in range(i - w + 1, i + 1):
            d = r[j] - mean_r
            m2 += d * d
            m3 += d * d * d
            m4 += d * d * d * d
        m2, m3, m4 = m2 / w, m3 / w, m4 / w
        bpv = _bipower(_wsum(abs_products, i, w - 1), w)
        tsrv = (_wsum(slow_sq, i, w + 1 - k_slow) / k_slow - (nbar / w) * rv) / (1 - nbar / w)
        rv_vol = math.sqrt(rv)
        close, previous_close = c[i], c[i - 1]
        # the coarse bars visible at bar i: the last closed one, and the coarse_w ending there
        last = visible[i] - 1
        prior_close = coarse_c[last] if last >= 0 else np.nan
        ssr_last_period = np.nan  # the last closed coarse bar triggered Rule 201
        if last >= 1:
            ssr_last_period = 1.0 if _ssr_triggered(coarse_l[last], coarse_c[last - 1], ssr_ratio) else 0.0
        coarse_low = coarse_high = np.nan
        if last - coarse_w + 1 >= 0:
            coarse_low, coarse_high = np.inf, -np.inf
            for j in range(last - coarse_w + 1, last + 1):
                coarse_low = _min(coarse_low, coarse_l[j])
                coarse_high = _max(coarse_high, coarse_h[j])
        coarse_mom = lcc[last] - lcc[last - coarse_w] if last - coarse_w >= 0 else np.nan
        coarse_vol = math.sqrt(_wsum(coarse_r2, last, coarse_w)) if last >= 0 else np.nan
        # lows since the last coarse close: the fine bars of the window that saw the same coarse bars as bar i
        period_low = np.inf
        for j in range(i - w + 1, i + 1):
            if visible[j] == visible[i]:
                period_low = min(period_low, l[j])
        ssr_active = np.nan
        if prior_close == prior_close and ssr_last_period == ssr_last_period:
            ssr_active = max(1.0 if _ssr_triggered(period_low, prior_close, ssr_ratio) else 0.0, ssr_last_period)

        row[0] = rv_vol  # rv_vol
        row[1] = math.sqrt(_max(tsrv, 0.0))  # tsrv_vol
        row[2] = math.sqrt(bpv)  # bpv_vol
        row[3] = _min(_max(1.0 - _ratio(bpv, rv, 1.0), 0.0), 1.0)  # jump_share
        row[4] = math.sqrt(_ratio(_wsum(r2, i, quarter) / quarter, rv / w, 1.0))  # vol_ratio
        row[5] = math.sqrt(_wsum(sq_range, i, w) / _LOG2X4)  # range_vol
        row[6] = _ratio(lc[i] - lc[i - w], rv_vol, 0.0)  # trend_z
        row[7] = _ratio(abs(sum_r), _wsum(a, i, w), 0.0)  # efficiency
        row[8] = _ratio(_wsum(r_products, i, w - 1), rv, 0.0)  # autocorr
        row[9] = _ratio(m3, m2**1.5, 0.0)  # skew
        row[10] = _ratio(m4, m2**2, 3.0) - 3.0  # kurtosis
        row[11] = _amihud(_wsum(a, i, w), _wsum(dollar_volume, i, w))  # log_amihud
        row[12] = _zscore(lv[i], mean_lv, _wssd(lv, i, w, mean_lv), w)  # volume_z
        row[13] = _wsum(lv, i, quarter) / quarter - mean_lv  # volume_trend
        row[14] = ssr_active  # ssr_active
        row[15] = math.log(close / prior_close)  # prior_close_ret
        row[16] = _band_distance(close, previous_close, prior_close, luld)  # luld_distance
        row[17] = coarse_mom  # coarse_mom
        row[18] = coarse_vol  # coarse_vol
        row[19] = _ratio(close - coarse_low, coarse_high - coarse_low, 0.5)  # coarse_position


# ---------------------------------------------------------------- pattern features (dualhrq.features.pattern)


@_kernel
def pattern_rows(c: np.ndarray, v: np.ndarray, first: int, w: int, out: np.ndarray) -> None:
    """Pattern rows first..n-1: the w returns ending at each scaled by their RMS, then PATTERN_SUMMARY; a row
    whose returns reach before the series is NaN."""
    r = _diff(np.log(c))
    lv = np.log1p(v)
    recent = w // 4
    root = math.sqrt(w)
    for i in range(first, len(c)):
        row = out[i - first]
        lo = i - w + 1
        if lo < 1:  # r[0] is NaN: no complete window yet
            row[:] = np.nan
            continue
        vol = math.sqrt(_wssd(r, i, w, 0.0) / w)  # the window's RMS return
        cum = peak = drawdown = recent_sq = 0.0
        for j in range(w):
            s = _ratio(r[lo + j], vol, 0.0)
            row[j] = s
            cum += s
            peak = max(peak, max(cum, 0.0))
            drawdown = max(drawdown, peak - cum)
            if j >= w - recent:
                recent_sq += s * s
        mean_lv = _wsum(lv, i, w) / w
        row[w] = math.log(max(vol, 1e-12))  # log_vol
        row[w + 1] = cum / root  # trend_z
        row[w + 2] = drawdown / root  # drawdown_z
        row[w + 3] = math.sqrt(recent_sq / recent)  # recent_vol
        row[w + 4] = _zscore(lv[i], mean_lv, _wssd(lv, i, w, mean_lv), w)  # volume_z


# ---------------------------------------------------------------- normalisation (dualhrq.features.stats)


@_kernel
def _normalised(x: float, mean: float, std: float, clip: float) -> np.float32:
    """(x - mean) / std clipped to +-clip, as float32; NaN stays NaN."""
    return np.float32(_min(_max((x - mean) / std, -clip), clip))


@_kernel
def normalise_rows(x: np.ndarray, mean: np.ndarray, std: np.ndarray, clip: float, out: np.ndarray) -> None:
    """out[i, j] = `_normalised` x[i, j] by column j's mean and std."""
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = _normalised(x[i, j], mean[j], std[j], clip)


@_kernel
def _all_finite(x: np.ndarray) -> bool:
    for value in x.ravel():
        if not math.isfinite(value):
            return False
    return True


# ---------------------------------------------------------------- a stream's newest bars (dualhrq.features.newest)


@_kernel
def newest_rows(fine: tuple, coarse: tuple, rule: tuple, regime_rule: tuple, scaling: tuple, tokens: np.ndarray,
                regime: np.ndarray, pattern: np.ndarray) -> tuple[int, int]:
    """The normalised fine tokens of the last len(tokens) bars (bar_rows, then the position state of
    state_rows), the normalised regime row and the pattern row (its window: len(pattern) less the summary) of
    the last bar: what each family's function and `normalise_rows` give, in one call. The tuples are unpacked
    below: the fine bars' columns and ``log_close``, the closes' logs from bar len(c) - len(log_close) on; the
    coarse bars closed by the last fine bar, as `regime_rows` reads them; `state_rows`' arguments; `regime_rows`'
    rule; the training statistics. Returns (the newest bar's state, flat when unknown; the first incomplete
    output: -1 none, 0 tokens, 1 regime, 2 pattern).

    NOTE: plain tuples, not named ones: numba types a plain tuple of arrays in its compiled dispatch, a named
    tuple through Python's typeof, at ~2 us an array on every call."""
    t, o, h, l, c, v, log_close = fine  # noqa: E741
    bar_w, horizon, cost_bps, vol_threshold, flat, long, short, unknown = rule
    fine_mean, fine_std, regime_mean, regime_std, clip = scaling
    n, k = len(c), tokens.shape[0]
    raw = np.empty((k, BAR_WIDTH))
    bar_rows(o, h, l, c, v, n - k, bar_w, raw)
    states = np.empty(k, np.int64)
    state_rows(log_close, len(log_close) - k, bar_w, horizon, cost_bps, vol_threshold, flat, long, short, unknown,
               states)
    position = np.empty((k, POSITION_WIDTH))
    position_rows(states, long, short, unknown, position)
    for i in range(k):
        for j in range(BAR_WIDTH):
            tokens[i, j] = _normalised(raw[i, j], fine_mean[j], fine_std[j], clip)
        for j in range(POSITION_WIDTH):
            tokens[i, BAR_WIDTH + j] = _normalised(position[i, j], fine_mean[BAR_WIDTH + j], fine_std[BAR_WIDTH + j],
                                                   clip)
    regime_raw = np.empty((1, REGIME_WIDTH))
    regime_rows(t, h, l, c, v, coarse, n - 1, regime_rule, regime_raw)
    for j in range(REGIME_WIDTH):
        regime[j] = _normalised(regime_raw[0, j], regime_mean[j], regime_std[j], clip)
    pattern_raw = np.empty((1, pattern.shape[0]))
    pattern_rows(c, v, n - 1, pattern.shape[0] - PATTERN_SUMMARY_WIDTH, pattern_raw)
    for j in range(pattern.shape[0]):
        pattern[j] = np.float32(pattern_raw[0, j])
    state = state_of_flags(position[k - 1], long, short, flat)
    incomplete = -1
    for code, x in enumerate((tokens, regime.reshape(1, -1), pattern.reshape(1, -1))):
        if incomplete < 0 and not _all_finite(x):
            incomplete = code
    return state, incomplete
