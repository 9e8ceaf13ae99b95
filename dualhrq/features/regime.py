"""Regime features, one row per fine bar: the state of the market the model conditions on.

Each row reads the REGIME_WINDOW fine bars ending there (noise- and jump-robust volatility, trend, return
distribution, liquidity, volume) and the coarse bars visible then (prior close, the market-rule states, the
coarse trend, volatility and position in the coarse range). Rule 201's "day" is the coarse period here: exact
for intraday fine bars with daily coarse ones, a weekly analogue for daily -> weekly; same-period lows are
looked for within the fine window. The columns are computed by `kernels.regime_rows`, in this order:

    rv_vol           sqrt(RV) over the fine window
    tsrv_vol         sqrt(max(TSRV, 0)): the volatility with microstructure noise removed
    bpv_vol          sqrt(BPV): the volatility without jumps
    jump_share       1 - BPV / RV clipped to [0, 1]: the part of the variance due to jumps
    vol_ratio        per-bar volatility of the window's last quarter / of the whole window
    range_vol        sqrt(Parkinson variance)
    trend_z          window return / sqrt(RV): the drift's t-statistic
    efficiency       |sum r| / sum |r|: 1 = straight trend, 0 = pure back-and-forth
    autocorr         lag-1 autocorrelation of returns (uncentred): < 0 is mean reversion
    skew             skewness of returns
    kurtosis         excess kurtosis of returns
    log_amihud       Amihud illiquidity
    volume_z         the last bar's log volume, z-scored within the window
    volume_trend     mean log volume of the last quarter minus that of the whole window
    ssr_active       1 while Rule 201 would be active: triggered in this coarse period or the previous one
    prior_close_ret  log(c / prior close), the prior close being the last closed coarse bar's
    luld_distance    `luld_band_distance` of the close, reference = previous fine close, tier 1
    coarse_mom       log return over the last REGIME_COARSE_WINDOW closed coarse bars
    coarse_vol       sqrt(RV) of those coarse bars
    coarse_position  (c - their lowest low) / (their highest high - lowest low)
"""

from __future__ import annotations

import numpy as np

from dualhrq.data.bars import Bars
from dualhrq.data.market_rules import SSR
from dualhrq.features import kernels
from dualhrq.features.estimators import tsrv_k
from dualhrq.features.kernels import f64, tail_rows
from dualhrq.features.market import luld_table

REGIME_WINDOW = 48  # fine bars
REGIME_COARSE_WINDOW = 20  # coarse bars
REGIME_WARMUP = REGIME_WINDOW  # fine rows before this index are NaN
REGIME_COARSE_WARMUP = REGIME_COARSE_WINDOW + 1  # coarse bars needed: the window's returns need one more close
REGIME_QUARTER = REGIME_WINDOW // 4  # the window's last quarter: recent volatility and volume against the whole
REGIME_LULD_TABLE = luld_table(1)  # luld_distance reads tier 1's bands
REGIME_TSRV_K = tsrv_k(REGIME_WINDOW)  # tsrv_vol's slow scale
# `kernels.regime_rows`' fixed arguments
REGIME_RULE = (REGIME_WINDOW, REGIME_QUARTER, REGIME_COARSE_WINDOW, REGIME_TSRV_K, SSR.trigger_ratio, REGIME_LULD_TABLE)

REGIME_FEATURES: tuple[str, ...] = (
    "rv_vol", "tsrv_vol", "bpv_vol", "jump_share", "vol_ratio", "range_vol", "trend_z", "efficiency", "autocorr",
    "skew", "kurtosis", "log_amihud", "volume_z", "volume_trend", "ssr_active", "prior_close_ret", "luld_distance",
    "coarse_mom", "coarse_vol", "coarse_position",
)


def regime_features(fine: Bars, coarse: Bars, last: int | None = None) -> np.ndarray:
    """[len(fine), len(REGIME_FEATURES)] float64 (or its last ``last`` rows), each row from the fine window
    ending there and the coarse bars visible then; rows before REGIME_WARMUP are NaN."""
    n = len(fine.c)
    m = tail_rows(n, last)
    out = np.empty((m, kernels.REGIME_WIDTH))
    kernels.regime_rows(np.ascontiguousarray(fine.t, np.int64), f64(fine.h), f64(fine.l), f64(fine.c), f64(fine.v),
                        coarse_columns(coarse), n - m, REGIME_RULE, out)
    return out


def coarse_columns(coarse: Bars) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The coarse bars' (t, l, h, c) as `kernels.regime_rows` reads them."""
    return np.ascontiguousarray(coarse.t, np.int64), f64(coarse.l), f64(coarse.h), f64(coarse.c)
