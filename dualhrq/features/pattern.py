"""Pattern features: the retrieval key that finds similar past windows in the pattern library.

A row is the last ``window`` log returns divided by the window's per-bar RMS return (oldest first; scale-free,
so shapes match across instruments and volatility regimes), then the PATTERN_SUMMARY columns, computed by
`kernels.pattern_rows`:

    log_vol      log per-bar volatility (RMS return) of the window, floored at 1e-12 for a flat window
    trend_z      sum of the scaled returns / sqrt(window)
    drawdown_z   deepest fall of the scaled cumulative return / sqrt(window)
    recent_vol   RMS of the last quarter's scaled returns: recent against the window's volatility
    volume_z     the last bar's log(1 + volume), z-scored within the window
"""

from __future__ import annotations

import numpy as np

from dualhrq.data.bars import Bars
from dualhrq.errors import ConfigurationError
from dualhrq.features import kernels
from dualhrq.features.kernels import f64, tail_rows

PATTERN_SUMMARY: tuple[str, ...] = ("log_vol", "trend_z", "drawdown_z", "recent_vol", "volume_z")


def pattern_features(fine: Bars, window: int, last: int | None = None) -> np.ndarray:
    """[n, window + len(PATTERN_SUMMARY)] (or its last ``last`` rows): the scaled returns, then
    PATTERN_SUMMARY. Rows before index ``window`` are NaN."""
    if window < 4:
        raise ConfigurationError(f"patterns.window: must be >= 4, got {window}")
    n = len(fine.c)
    m = tail_rows(n, last)
    out = np.empty((m, window + kernels.PATTERN_SUMMARY_WIDTH))
    kernels.pattern_rows(f64(fine.c), f64(fine.v), n - m, window, out)
    return out
