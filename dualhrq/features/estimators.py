"""Volatility and liquidity estimators: realized variance, bipower variation, two-scale realized variance,
Parkinson's range variance and Amihud's illiquidity, on log returns.

Each estimator reduces over the last axis, so the same function serves one long window (the estimator tests)
and a rolling window (a view [n, w] over the series). Each is a reduction and a formula on its sums; the
rolling features reduce many series' windows at once and apply the same formulas (the ``*_from_sums``
functions) to the sums.
"""

from __future__ import annotations

import math

import numpy as np

from dualhrq.errors import ConfigurationError
from dualhrq.features.rolling import f64, window_sums, windows, with_previous

MU1 = math.sqrt(2.0 / math.pi)  # E|Z| for a standard normal Z: the bipower scale
_EPS = 1e-12  # keeps log-ratios finite for windows without movement or without volume


def log_returns(close: np.ndarray) -> np.ndarray:
    """r[i] = log(c[i] / c[i-1]); r[0] is NaN."""
    return with_previous(np.subtract, np.log(close))


def realized_variance(r: np.ndarray) -> np.ndarray:
    """RV = sum of squared returns."""
    return window_sums(r * r)


def bipower_variation(r: np.ndarray) -> np.ndarray:
    """BPV = mu1^-2 * n/(n-1) * sum |r_i||r_{i-1}| (Barndorff-Nielsen & Shephard 2004): integrated variance
    without the jumps, since a single jump enters only products with its small neighbours."""
    a = np.abs(r)
    return bipower_from_sums(window_sums(a[..., 1:] * a[..., :-1]), r.shape[-1])


def bipower_from_sums(sum_abs_products: np.ndarray, n: int) -> np.ndarray:
    """BPV of n returns from the sum of their n - 1 adjacent absolute products."""
    return (n / (n - 1)) * sum_abs_products / MU1**2


def tsrv_k(n: int) -> int:
    """TSRV's default slow scale for n returns: round(n^(2/3)), at least 2."""
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
    k = tsrv_k(n) if k is None else k
    if not 2 <= k < n:
        raise ConfigurationError(f"tsrv: k must be in [2, {n - 1}] for {n} returns, got {k}")
    rv_all = realized_variance(log_price[..., 1:] - log_price[..., :-1])
    return tsrv_from_sums(rv_all, realized_variance(log_price[..., k:] - log_price[..., :-k]), n, k)


def tsrv_from_sums(rv_all: np.ndarray, sum_slow_sq: np.ndarray, n: int, k: int) -> np.ndarray:
    """TSRV from the all-returns RV and the sum of squared K-spaced returns over n returns."""
    nbar = (n - k + 1) / k
    return (sum_slow_sq / k - (nbar / n) * rv_all) / (1 - nbar / n)


def realized_vol(close: np.ndarray, window: int) -> np.ndarray:
    """sqrt(RV) of the last ``window`` returns at each bar (NaN until there are that many)."""
    return np.sqrt(realized_variance(windows(log_returns(f64(close)), window)))


def parkinson_from_sums(sum_sq_log_range: np.ndarray) -> np.ndarray:
    """Parkinson's variance from the sum of squared log(high / low) over the window."""
    return sum_sq_log_range / (4 * math.log(2))


def amihud_from_sums(sum_abs_returns: np.ndarray, sum_dollar_volume: np.ndarray) -> np.ndarray:
    """log Amihud illiquidity: absolute return per unit of dollar volume over the window."""
    return np.log((sum_abs_returns + _EPS) / (sum_dollar_volume + _EPS))
