"""Normalisation of the model's input features: per-column mean and std fitted on the training window, saved
with the model, and checked against the column names this code computes, so that a model is never fed
columns it was not trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dualhrq.errors import DataError, ModelLoadError
from dualhrq.features import kernels
from dualhrq.features.bar import BAR_FEATURES
from dualhrq.features.fine import FINE_FEATURES
from dualhrq.features.regime import REGIME_FEATURES

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
        """(x - mean) / std, clipped to +-CLIP, float32, over the last axis; NaN stays NaN (the kernel a stream's
        append normalises with too)."""
        x = np.asarray(x, np.float64)
        if x.shape[-1:] != self.mean.shape:
            raise DataError(f"cannot normalise features ({self.names[0]}, ...): rows of shape {list(x.shape)}, "
                            f"expected {len(self.names)} columns")
        rows = np.ascontiguousarray(x).reshape(-1, len(self.names))
        out = np.empty(rows.shape, np.float32)
        kernels.normalise_rows(rows, self.mean, self.std, CLIP, out)
        return out.reshape(x.shape)

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
