"""Input checks and standardisation shared by the encoder, the regimes and the library.

Everything in dualhrq.patterns takes plain arrays; these turn bad ones into a DataError that names the field
instead of a numpy broadcast error (or worse, a silently wrong answer) further down.
"""

from __future__ import annotations

import numpy as np

from dualhrq.errors import DataError


def finite_matrix(x: object, name: str, dim: int | None = None, dtype: type = np.float64) -> np.ndarray:
    """A C-contiguous 2-D array [n, dim] of finite values."""
    a = np.ascontiguousarray(x, dtype=dtype)
    if a.ndim != 2 or (dim is not None and a.shape[1] != dim):
        raise DataError(f"{name}: expected shape [n, {'F' if dim is None else dim}], got {list(a.shape)}")
    bad = ~np.isfinite(a).all(axis=1)
    if bad.any():
        raise DataError(f"{name}: {int(bad.sum())} rows contain NaN or inf (first: row {int(np.argmax(bad))})")
    return a


def column(x: object, name: str, n: int, dtype: type) -> np.ndarray:
    """A scalar (broadcast to n) or a length-n vector, as a fresh array of ``dtype``."""
    a = np.asarray(x)
    if a.ndim > 1 or (a.ndim == 1 and len(a) != n):
        raise DataError(f"{name}: expected a scalar or {n} values, got shape {list(a.shape)}")
    if np.issubdtype(np.dtype(dtype), np.integer) and a.size and not np.issubdtype(a.dtype, np.integer):
        raise DataError(f"{name}: expected integers, got {a.dtype}")
    a = np.broadcast_to(a.astype(dtype), (n,)).copy()
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise DataError(f"{name}: contains NaN or inf")
    return a


def standardizer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) per column; a constant column gets scale 1 so it standardises to zero, not to NaN."""
    std = x.std(axis=0)
    return x.mean(axis=0), np.where(std > 1e-12, std, 1.0)
