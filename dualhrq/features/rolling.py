"""What every feature family's entry point shares: float64 columns for the kernels and the rows to compute.

Training computes every row of a long history; serving computes the newest rows of the ~70 bars a request
carries. The families' kernels (dualhrq.features.kernels) take the index of the first row to compute.
"""

from __future__ import annotations

import numpy as np

from dualhrq.errors import ConfigurationError


def f64(x: np.ndarray) -> np.ndarray:
    """A C-contiguous float64 array (no copy when it already is one), as the kernels read it."""
    return np.ascontiguousarray(x, np.float64)


def tail_rows(n: int, last: int | None) -> int:
    """How many trailing rows of an n-bar series to compute: all (None) or the last ``last``."""
    if last is None:
        return n
    if last < 1:
        raise ConfigurationError(f"last: must be >= 1 (rows to compute), got {last}")
    return min(last, n)
