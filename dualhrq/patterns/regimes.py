"""Unsupervised market regimes: k-means on standardised regime features, numbered from calm to turbulent.

The labels are the targets of the model's regime classifier and tag every pattern-library entry. k-means
(rather than a Gaussian mixture) because its hard, centre-based assignment is cheap to apply anywhere
(``RegimeModel.predict`` is numpy only and survives a JSON round-trip) and is deterministic given the seed.
Cluster ids from k-means are arbitrary, so regimes are renumbered by mean volatility: regime 0 is always the
calmest, and refits on overlapping data keep comparable ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from dualhrq.data.resample import DAY_NS
from dualhrq.errors import ConfigurationError, DataError, ModelLoadError
from dualhrq.patterns.arrays import finite_matrix, standardizer


@dataclass(frozen=True)
class RegimeModel:
    """Nearest-centre assignment in standardised feature space; centre r is regime r (0 = calmest)."""

    mean: np.ndarray  # [F]
    scale: np.ndarray  # [F]
    centers: np.ndarray  # [R, F], standardised units
    mean_vol: np.ndarray  # [R] mean volatility of each regime on the training window, ascending

    @property
    def n_regimes(self) -> int:
        return len(self.centers)

    def predict(self, regime_features: np.ndarray) -> np.ndarray:
        """Regime ids [n] (int64) for regime features [n, F]."""
        x = finite_matrix(regime_features, "regime_features")
        if x.shape[1] != len(self.mean):
            raise DataError(f"regime_features: expected {len(self.mean)} features per row, got {x.shape[1]}")
        z = (x - self.mean) / self.scale
        d = (z * z).sum(1)[:, None] - 2.0 * z @ self.centers.T + (self.centers**2).sum(1)[None, :]
        return d.argmin(axis=1).astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist(), "centers": self.centers.tolist(),
                "mean_vol": self.mean_vol.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RegimeModel:
        try:
            model = cls(**{k: np.asarray(d[k], np.float64) for k in ("mean", "scale", "centers", "mean_vol")})
        except (KeyError, TypeError, ValueError) as e:
            raise ModelLoadError(f"regime model: malformed saved state ({e!r})") from None
        f = len(model.mean)
        if model.centers.ndim != 2 or model.centers.shape[1] != f or len(model.mean_vol) != len(model.centers):
            raise ModelLoadError(f"regime model: centres {list(model.centers.shape)} do not match {f} features "
                                 f"and {len(model.mean_vol)} regimes")
        return model


def fit_regimes(regime_features: np.ndarray, n_regimes: int, seed: int, vol: np.ndarray | None = None) -> RegimeModel:
    """Fit R regimes on training-window regime features [n, F]; deterministic for a given seed.

    ``vol`` (realised volatility per row) only orders the regimes; by default the first regime feature, which
    ``dualhrq.features.regime_features`` puts there.
    """
    x = finite_matrix(regime_features, "regime_features")
    if not 2 <= n_regimes <= 32:
        raise ConfigurationError(f"model.num_regimes: must be in [2, 32], got {n_regimes}")
    if len(x) < 2 * n_regimes:
        raise DataError(f"regime_features: {len(x)} rows are too few for {n_regimes} regimes")
    v = x[:, 0] if vol is None else np.asarray(vol, np.float64)
    if v.shape != (len(x),) or not np.isfinite(v).all():
        raise DataError(f"vol: expected {len(x)} finite values, got shape {list(v.shape)}")
    from sklearn.cluster import KMeans  # here, not at the top: serving loads a RegimeModel without fitting one

    mean, scale = standardizer(x)
    z = (x - mean) / scale
    km = KMeans(n_clusters=n_regimes, n_init=10, random_state=seed).fit(z)
    if len(np.unique(km.labels_)) < n_regimes:
        raise DataError(f"regime_features: only {len(np.unique(km.labels_))} distinct clusters for "
                        f"{n_regimes} regimes; lower model.num_regimes")
    cluster_vol = np.array([v[km.labels_ == c].mean() for c in range(n_regimes)])
    order = np.argsort(cluster_vol, kind="stable")
    return RegimeModel(mean=mean, scale=scale, centers=km.cluster_centers_[order].astype(np.float64),
                       mean_vol=cluster_vol[order])


@dataclass(frozen=True)
class RegimeStats:
    regime: int
    share: float  # of bars
    mean_vol: float
    mean_return: float  # per bar
    exits_per_day: float  # how often the regime is left, per calendar day


@dataclass(frozen=True)
class RegimeSummary:
    regimes: list[RegimeStats]
    switches_per_day: float  # regime changes per calendar day, all regimes
    switch_rate: float  # share of bar-to-bar steps whose regime changes (under 5%: persistent enough to condition on)


def regime_summary(ids: np.ndarray, returns: np.ndarray, vol: np.ndarray, timestamps: npt.ArrayLike,
                   n_regimes: int | None = None) -> RegimeSummary:
    """Per regime: share of time, mean volatility, mean return, exits per day; plus the overall switch rates.

    ``timestamps``: int ns or datetime64 per bar, increasing. Regimes that never occur get share 0 and NaN means.
    """
    ids = np.asarray(ids, np.int64)
    n = len(ids)
    r = np.asarray(returns, np.float64)
    v = np.asarray(vol, np.float64)
    t = np.asarray(timestamps).astype("datetime64[ns]").astype(np.int64)
    for name, a in (("returns", r), ("vol", v), ("timestamps", t)):
        if a.shape != (n,):
            raise DataError(f"{name}: expected {n} values (one per regime id), got shape {list(a.shape)}")
    if n < 2:
        raise DataError(f"ids: need at least 2 bars to measure switching, got {n}")
    if (np.diff(t) <= 0).any():
        raise DataError("timestamps: must be strictly increasing")
    count = int(ids.max()) + 1 if n_regimes is None else n_regimes
    days = (t[-1] - t[0]) / DAY_NS
    switched = ids[1:] != ids[:-1]
    rows = []
    for k in range(count):
        in_k = ids == k
        exits = int((switched & in_k[:-1]).sum())
        rows.append(RegimeStats(regime=k, share=float(in_k.mean()),
                                mean_vol=float(v[in_k].mean()) if in_k.any() else float("nan"),
                                mean_return=float(r[in_k].mean()) if in_k.any() else float("nan"),
                                exits_per_day=exits / days))
    return RegimeSummary(regimes=rows, switches_per_day=float(switched.sum() / days),
                         switch_rate=float(switched.mean()))
