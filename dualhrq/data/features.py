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

from dualhrq.compliance.rules import LULD, SSR
from dualhrq.data.bars import Bars
from dualhrq.data.resample import visible_counts
from dualhrq.errors import ConfigurationError, DataError, ModelLoadError

MU1 = math.sqrt(2.0 / math.pi)  # E|Z| for a standard normal Z: the bipower scale
_EPS = 1e-12  # keeps log-ratios finite for windows without movement or without volume


# ---------------------------------------------------------------- rolling helpers


def _windows(x: np.ndarray, w: int) -> np.ndarray:
    """[n] -> [n, w], row i holding x[i-w+1 .. i] (a strided view: never write to it); rows without w values
    of history are NaN. Built directly rather than with sliding_window_view, whose checks cost more than
    the maths on the short series a request carries."""
    padded = np.concatenate([np.full(w - 1, np.nan), np.asarray(x, np.float64)])
    return np.ndarray((len(x), w), np.float64, padded, strides=(8, 8))


def _lag(x: np.ndarray, k: int) -> np.ndarray:
    """x shifted k places later; the first k values are NaN."""
    out = np.full(len(x), np.nan)
    out[k:] = x[: max(len(x) - k, 0)]
    return out


def _ratio(a: np.ndarray, b: np.ndarray, fill: float) -> np.ndarray:
    """a / b for a denominator b >= 0; ``fill`` where b == 0 (a flat window); NaN where a or b is NaN."""
    out = np.full(np.broadcast_shapes(np.shape(a), np.shape(b)), fill)
    return np.divide(a, b, out=out, where=(b != 0) | np.isnan(a))  # NaN / 0 is a quiet NaN: no warning


def _zscore_last(win: np.ndarray) -> np.ndarray:
    """Z-score of each window's last value within the window (0 for a constant window)."""
    return _ratio(win[:, -1] - win.mean(axis=1), win.std(axis=1), 0.0)


def _at(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """x[idx] with NaN where idx < 0 (nothing known yet)."""
    out = np.full(idx.shape, np.nan)
    ok = idx >= 0
    out[ok] = x[idx[ok]]
    return out


def log_returns(close: np.ndarray) -> np.ndarray:
    """r[i] = log(c[i] / c[i-1]); r[0] is NaN."""
    return np.diff(np.log(close), prepend=np.nan)


# ---------------------------------------------------------------- estimators (reduce over the last axis)


def realized_variance(r: np.ndarray) -> np.ndarray:
    """RV = sum of squared returns."""
    return np.sum(r * r, axis=-1)


def bipower_variation(r: np.ndarray) -> np.ndarray:
    """BPV = mu1^-2 * n/(n-1) * sum |r_i||r_{i-1}| (Barndorff-Nielsen & Shephard 2004): integrated variance
    without the jumps, since a single jump enters only products with its small neighbours."""
    n = r.shape[-1]
    a = np.abs(r)
    return (n / (n - 1)) * np.sum(a[..., 1:] * a[..., :-1], axis=-1) / MU1**2


def tsrv(log_price: np.ndarray, k: int | None = None) -> np.ndarray:
    """Two-scale realized variance (Zhang, Mykland & Ait-Sahalia 2005) from n+1 log prices on the last axis.

    RV at the slow scale (K-spaced returns, averaged over the K offsets) minus the microstructure-noise bias
    that the all-returns RV measures, with the small-sample correction (1 - nbar/n)^-1, nbar = (n-K+1)/K.
    K defaults to round(n^(2/3)), the rate-optimal order; the best constant depends on the noise-to-signal
    ratio, K* = (12 noise^4 / integrated quarticity)^(1/3) n^(2/3), so pass k when that is known. On short
    noisy windows TSRV can come out negative.
    """
    n = log_price.shape[-1] - 1
    k = max(2, round(n ** (2 / 3))) if k is None else k
    if not 2 <= k < n:
        raise ValueError(f"tsrv: k must be in [2, {n - 1}] for {n} returns, got {k}")
    rv_all = np.sum(np.diff(log_price, axis=-1) ** 2, axis=-1)
    rv_slow = np.sum((log_price[..., k:] - log_price[..., :-k]) ** 2, axis=-1) / k
    nbar = (n - k + 1) / k
    return (rv_slow - (nbar / n) * rv_all) / (1 - nbar / n)


def realized_vol(close: np.ndarray, window: int) -> np.ndarray:
    """sqrt(RV) of the last ``window`` returns at each bar (NaN until there are that many)."""
    return np.sqrt(realized_variance(_windows(log_returns(close), window)))


def parkinson_variance(high: np.ndarray, low: np.ndarray) -> np.ndarray:
    """Range-based variance: sum of log(h/l)^2 / (4 ln 2)."""
    return np.sum(np.log(high / low) ** 2, axis=-1) / (4 * math.log(2))


def log_amihud(abs_returns: np.ndarray, dollar_volume: np.ndarray) -> np.ndarray:
    """log Amihud illiquidity, sum|r| / sum(price * volume) over the window: a ratio of sums, not a mean of
    per-bar ratios, because zero-volume bars (common in FX tick volume) make the per-bar ratio infinite."""
    return np.log((np.sum(abs_returns, axis=-1) + _EPS) / (np.sum(dollar_volume, axis=-1) + _EPS))


# ---------------------------------------------------------------- market rules as features
# The thresholds come from the compliance gate's rule tables (dualhrq.compliance.rules), read vectorised.


def ssr_triggered(price: np.ndarray, prior_close: np.ndarray) -> np.ndarray:
    """Rule 201's trigger: a price at or below 90% of the prior close."""
    return price <= SSR.trigger_ratio * prior_close


def luld_half_width(reference: np.ndarray, prior_close: np.ndarray, tier: int = 1) -> np.ndarray:
    """Half the LULD band in price units: reference x the percentage the prior close selects (capped in
    dollars on the sub-$0.75 row), unrounded. Bars carry no clock time, so the open/close doubling is not
    applied: the feature measures the base band."""
    if tier not in (1, 2):
        raise ValueError(f"tier: must be 1 or 2, got {tier}")
    rows = (LULD.above_high, LULD.middle, LULD.below_low)
    picks = [prior_close > LULD.high_price, prior_close >= LULD.low_price]
    pct = np.select(picks, [r.tier1 if tier == 1 else r.tier2 for r in rows[:2]],
                    rows[2].tier1 if tier == 1 else rows[2].tier2)
    cap = np.select(picks, [r.cap or np.inf for r in rows[:2]], rows[2].cap or np.inf)
    return np.where(np.isnan(prior_close), np.nan, np.minimum(reference * pct, cap))


def luld_band_distance(price: np.ndarray, reference: np.ndarray, prior_close: np.ndarray,
                       tier: int = 1) -> np.ndarray:
    """Distance from the price to the nearer LULD band as a fraction of the band's width: 0.5 at the
    reference, 0 on a band, negative outside it."""
    half = luld_half_width(reference, prior_close, tier)
    return (half - np.abs(price - reference)) / (2 * half)


# ---------------------------------------------------------------- per-bar features (one per timeframe)

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


def bar_features(bars: Bars) -> np.ndarray:
    """[n, len(BAR_FEATURES)] float64; rows before BAR_WARMUP are NaN."""
    o, h, l, c, v = bars.o, bars.h, bars.l, bars.c, bars.v
    w = BAR_WINDOW
    lc = np.log(c)
    r = log_returns(c)
    rw = _windows(r, w)
    rv = realized_vol(c, w)
    cols = [
        r,
        np.log(o) - _lag(lc, 1),
        np.log(c / o),
        np.log(h / l),
        np.log(h / np.maximum(o, c)),
        np.log(np.minimum(o, c) / l),
        _zscore_last(_windows(np.log1p(v), w)),
        lc - _lag(lc, 5),
        lc - _lag(lc, 20),
        _zscore_last(_windows(lc, w)),
        rv,
        np.sqrt(bipower_variation(rw)),
        np.sqrt(parkinson_variance(_windows(h, w), _windows(l, w))),
        _ratio(r, rv / math.sqrt(w), 0.0),
        log_amihud(np.abs(rw), _windows(c * v, w)),
        _ratio(c - l, h - l, 0.5),
    ]
    return np.stack(cols, axis=1)


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


def _moments(rw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = rw - rw.mean(axis=1, keepdims=True)
    m2 = np.mean(d**2, axis=1)
    return _ratio(np.mean(d**3, axis=1), m2**1.5, 0.0), _ratio(np.mean(d**4, axis=1), m2**2, 3.0) - 3.0


def regime_features(fine: Bars, coarse: Bars) -> np.ndarray:
    """[len(fine), 20] float64 (REGIME_FEATURES), each row from the fine window ending there and the coarse
    bars visible then. Rule 201's "day" is the coarse period here: exact for intraday fine bars with daily
    coarse ones, a weekly analogue for daily -> weekly. Same-period lows are looked for within the fine window."""
    w, q, wc = REGIME_WINDOW, REGIME_WINDOW // 4, REGIME_COARSE_WINDOW
    c = fine.c
    lc = np.log(c)
    r = log_returns(c)
    rw = _windows(r, w)
    rv = realized_variance(rw)
    bpv = bipower_variation(rw)
    ts = tsrv(_windows(lc, w + 1))
    rv_vol = np.sqrt(rv)
    skew, kurt = _moments(rw)
    lv = _windows(np.log1p(fine.v), w)

    # Coarse side: per coarse bar, then read at the last coarse bar visible at each fine bar.
    k = visible_counts(coarse.t, fine.t)
    last = k - 1
    cc = coarse.c
    cr = log_returns(cc)
    coarse_trig = np.concatenate([[np.nan], ssr_triggered(coarse.l[1:], cc[:-1]).astype(float)])
    coarse_low = np.min(_windows(coarse.l, wc), axis=1)
    coarse_high = np.max(_windows(coarse.h, wc), axis=1)
    prior_close = _at(cc, last)
    low_range = _at(coarse_low, last)
    # Lows since the last coarse close: fine bars in the window that saw the same coarse bars as bar i.
    same_period = _windows(k.astype(float), w) == k[:, None]
    period_low = np.where(same_period, _windows(fine.l, w), np.inf).min(axis=1)
    ssr = np.maximum(ssr_triggered(period_low, prior_close), _at(coarse_trig, last))
    ssr[np.isnan(prior_close) | np.isnan(_at(coarse_trig, last))] = np.nan

    cols = [
        rv_vol,
        np.sqrt(np.maximum(ts, 0.0)),
        np.sqrt(bpv),
        np.clip(1.0 - _ratio(bpv, rv, 1.0), 0.0, 1.0),
        np.sqrt(_ratio(realized_variance(rw[:, -q:]) / q, rv / w, 1.0)),
        np.sqrt(parkinson_variance(_windows(fine.h, w), _windows(fine.l, w))),
        _ratio(lc - _lag(lc, w), rv_vol, 0.0),
        _ratio(np.abs(np.sum(rw, axis=1)), np.sum(np.abs(rw), axis=1), 0.0),
        _ratio(np.sum(rw[:, 1:] * rw[:, :-1], axis=1), rv, 0.0),
        skew,
        kurt,
        log_amihud(np.abs(rw), _windows(c * fine.v, w)),
        _zscore_last(lv),
        lv[:, -q:].mean(axis=1) - lv.mean(axis=1),
        ssr,
        np.log(c / prior_close),
        luld_band_distance(c, _lag(c, 1), prior_close),
        _at(np.log(cc) - _lag(np.log(cc), wc), last),
        _at(np.sqrt(realized_variance(_windows(cr, wc))), last),
        _ratio(c - low_range, _at(coarse_high, last) - low_range, 0.5),
    ]
    out = np.stack(cols, axis=1)
    out[:REGIME_WARMUP] = np.nan  # the fine window's first rows see part of it only
    return out


# ---------------------------------------------------------------- pattern features (the retrieval key)

PATTERN_SUMMARY: tuple[str, ...] = (
    "log_vol",  # log per-bar volatility of the window (floored at 1e-12 for a flat window)
    "trend_z",  # sum of the scaled returns / sqrt(window)
    "drawdown_z",  # deepest fall of the scaled cumulative return / sqrt(window)
    "recent_vol",  # RMS of the last quarter's scaled returns: recent vs window volatility
    "volume_z",  # last bar's log volume, z-scored in the window
)


def pattern_features(fine: Bars, window: int) -> np.ndarray:
    """[n, window + 5]: the last ``window`` log returns divided by the window's per-bar RMS return (oldest
    first; scale-free, so shapes match across instruments and volatility regimes), then PATTERN_SUMMARY.
    Rows before index ``window`` are NaN."""
    if window < 4:
        raise ConfigurationError(f"patterns.window: must be >= 4, got {window}")
    rw = _windows(log_returns(fine.c), window)
    vol = np.sqrt(np.mean(rw * rw, axis=1))
    scaled = _ratio(rw, vol[:, None], 0.0)
    root = math.sqrt(window)
    cum = np.cumsum(scaled, axis=1)
    peak = np.maximum.accumulate(np.maximum(cum, 0.0), axis=1)
    summary = [
        np.log(np.maximum(vol, 1e-12)),
        cum[:, -1] / root,
        np.max(peak - cum, axis=1) / root,
        np.sqrt(np.mean(scaled[:, -(window // 4):] ** 2, axis=1)),
        _zscore_last(_windows(np.log1p(fine.v), window)),
    ]
    return np.concatenate([scaled, np.stack(summary, axis=1)], axis=1)


def pattern_feature_names(window: int) -> tuple[str, ...]:
    """Column names of `pattern_features` (reports, feature tables)."""
    return tuple(f"r{j}" for j in range(window)) + PATTERN_SUMMARY


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
        rows = rows[np.isfinite(rows).all(axis=1)]
        if len(rows) < 2:
            raise DataError(f"cannot fit feature statistics ({names[0]}, ...): only {len(rows)} complete rows "
                            "in the training window")
        std = rows.std(axis=0)
        return cls(tuple(names), rows.mean(axis=0), np.where(std > 1e-12, std, 1.0))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(x - mean) / std, clipped to +-CLIP, float32; NaN stays NaN."""
        return np.clip((x - self.mean) / self.std, -CLIP, CLIP).astype(np.float32)

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
        return cls(ColumnStats.fit(BAR_FEATURES, coarse_rows), ColumnStats.fit(BAR_FEATURES, fine_rows),
                   ColumnStats.fit(REGIME_FEATURES, regime_rows))

    def to_dict(self) -> dict[str, Any]:
        return {"coarse": self.coarse.to_dict(), "fine": self.fine.to_dict(), "regime": self.regime.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureStats:
        if not isinstance(d, dict) or set(d) != {"coarse", "fine", "regime"}:
            raise ModelLoadError("feature_stats: expected a mapping with keys coarse, fine, regime")
        return cls(ColumnStats.from_dict(d["coarse"], BAR_FEATURES, "coarse"),
                   ColumnStats.from_dict(d["fine"], BAR_FEATURES, "fine"),
                   ColumnStats.from_dict(d["regime"], REGIME_FEATURES, "regime"))
