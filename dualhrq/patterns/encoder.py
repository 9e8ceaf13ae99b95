"""The pattern encoder: pattern features [n, F] -> embeddings [n, E] by standardisation and PCA.

It is fixed, fitted once on the training window and not trained with the model, because:

- the index stays valid when the model retrains: embeddings do not move, so nothing needs re-indexing;
- a query needs no model: the runtime embeds a window while the engine is busy with something else, and
  tools (``dualhrq index build``, the recall benchmark) work without a checkpoint;
- it is cheap at serve time: one [F, E] matrix product.

PCA scores are kept unwhitened, so L2 distance between embeddings approximates distance between standardised
feature vectors (the neighbours hnswlib finds are neighbours in feature space, with noise directions dropped),
and components come ordered by explained variance, so a shorter pattern context can simply truncate them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from dualhrq.errors import ConfigurationError, DataError, ModelLoadError
from dualhrq.patterns.arrays import finite_matrix, standardizer


class PatternEncoder:
    """Standardise with training statistics, then project on the top ``embed_dim`` principal components."""

    def __init__(self, embed_dim: int) -> None:
        if embed_dim < 1:
            raise ConfigurationError(f"patterns.embed_dim: must be >= 1, got {embed_dim}")
        self.embed_dim = embed_dim
        self.mean: np.ndarray | None = None  # [F]
        self.scale: np.ndarray | None = None  # [F]
        self.components: np.ndarray | None = None  # [E, F], rows orthonormal
        self.explained_variance_ratio: np.ndarray | None = None  # [E]

    @property
    def feature_dim(self) -> int:
        return self._state()[2].shape[1]

    def fit(self, features: np.ndarray) -> PatternEncoder:
        x = finite_matrix(features, "pattern_features")
        n, f = x.shape
        if self.embed_dim > f:
            raise ConfigurationError(f"patterns.embed_dim: {self.embed_dim} exceeds the {f} pattern features")
        if n <= self.embed_dim:
            raise DataError(f"pattern_features: {n} rows cannot fit {self.embed_dim} components; need more windows")
        mean, scale = standardizer(x)
        z = (x - mean) / scale
        _, s, vt = np.linalg.svd(z, full_matrices=False)
        comps = vt[: self.embed_dim]
        # SVD signs are arbitrary; fix them (largest loading positive) so refits give identical embeddings.
        signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])
        var = s**2
        self.mean, self.scale = mean, scale
        self.components = comps * signs[:, None]
        self.explained_variance_ratio = var[: self.embed_dim] / max(var.sum(), 1e-300)
        return self

    def encode(self, features: np.ndarray) -> np.ndarray:
        """Embeddings float32 [n, E] (C-contiguous, as hnswlib wants them)."""
        mean, scale, comps = self._state()
        x = finite_matrix(features, "pattern_features")
        if x.shape[1] != comps.shape[1]:
            raise DataError(f"pattern_features: expected {comps.shape[1]} features per row, got {x.shape[1]}")
        out = np.empty((len(x), len(comps)), np.float32)
        _project_rows(x, mean, scale, comps, out)
        return out

    def _state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.mean is None or self.scale is None or self.components is None:
            raise RuntimeError("PatternEncoder is not fitted: call fit() on training-window features first")
        return self.mean, self.scale, self.components

    def to_dict(self) -> dict[str, Any]:
        mean, scale, comps = self._state()
        ratio = self.explained_variance_ratio
        return {"embed_dim": self.embed_dim, "mean": mean.tolist(), "scale": scale.tolist(),
                "components": comps.tolist(), "explained_variance_ratio": [] if ratio is None else ratio.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PatternEncoder:
        try:
            enc = cls(int(d["embed_dim"]))
            enc.mean = np.asarray(d["mean"], np.float64)
            enc.scale = np.asarray(d["scale"], np.float64)
            enc.components = np.asarray(d["components"], np.float64)
            enc.explained_variance_ratio = np.asarray(d["explained_variance_ratio"], np.float64)
        except (KeyError, TypeError, ValueError) as e:
            raise ModelLoadError(f"pattern encoder: malformed saved state ({e!r})") from None
        f = len(enc.mean)
        if enc.components.shape != (enc.embed_dim, f) or enc.scale.shape != (f,):
            raise ModelLoadError(f"pattern encoder: components {list(enc.components.shape)} do not match "
                                 f"embed_dim {enc.embed_dim} and {f} features")
        return enc


@njit(cache=True, nogil=True)
def _project_rows(x: np.ndarray, mean: np.ndarray, scale: np.ndarray, components: np.ndarray,
                  out: np.ndarray) -> None:
    """out[i] = ((x[i] - mean) / scale) @ components.T, row by row: one compiled call per query, where the
    numpy expression is a handful of calls whose fixed cost, not the arithmetic, is a serving query's price."""
    for i in range(x.shape[0]):
        for e in range(components.shape[0]):
            s = 0.0
            for f in range(x.shape[1]):
                s += (x[i, f] - mean[f]) / scale[f] * components[e, f]
            out[i, e] = s
