"""Volatility estimators over one window of log returns or log prices: realized variance, bipower variation
and two-scale realized variance.

Each reduces over the last axis, so one function serves one long window and a stack of windows. The feature
kernels (dualhrq.features.kernels) apply the same formulas to the rolling windows of a series; a test holds
their columns to these functions.
"""

from __future__ import annotations

import numpy as np

from dualhrq.errors import ConfigurationError
from dualhrq.features.kernels import MU1


def log_returns(close: np.ndarray) -> np.ndarray:
    """r[i] = log(c[i] / c[i-1]); r[0] is NaN."""
    lc = np.log(np.asarray(close, np.float64))
    return np.concatenate([[np.nan], lc[1:] - lc[:-1]])


def realized_variance(r: np.ndarray) -> np.ndarray:
    """RV = sum of squared returns."""
    return np.add.reduce(r * r, axis=-1)


def bipower_variation(r: np.ndarray) -> np.ndarray:
    """BPV = mu1^-2 * n/(n-1) * sum |r_i||r_{i-1}| (Barndorff-Nielsen & Shephard 2004): integrated variance
    without the jumps, since a single jump enters only products with its small neighbours."""
    a = np.abs(r)
    n = r.shape[-1]
    return (n / (n - 1)) * np.add.reduce(a[..., 1:] * a[..., :-1], axis=-1) / MU1**2


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
    slow = realized_variance(log_price[..., k:] - log_price[..., :-k])
    nbar = (n - k + 1) / k
    return (slow / k - (nbar / n) * rv_all) / (1 - nbar / n)
