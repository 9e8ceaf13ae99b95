"""Per-bar features, one row per bar of a timeframe: the coarse (H) tokens and most of each fine (L) token.

Each row describes its bar (returns, range, wicks) and the BAR_WINDOW bars ending there (volatility,
momentum, liquidity, z-scores of the close and the volume), so it needs BAR_WARMUP bars of history. The
columns are computed by `kernels.bar_rows`, in this order:

    ret          log(c / previous c)
    gap          log(o / previous c)
    body         log(c / o)
    range        log(h / l)
    upper_wick   log(h / max(o, c))
    lower_wick   log(min(o, c) / l)
    volume_z     z-score of log(1 + v) within the window
    mom_5        log(c / c 5 bars ago)
    mom_20       log(c / c 20 bars ago)
    meanrev_z    z-score of log c within the window: stretched away from its mean, it tends to revert
    rv           sqrt(realized variance) over the window
    bpv          sqrt(bipower variation) over the window
    range_vol    sqrt(Parkinson variance) over the window
    ret_z        ret in units of per-bar volatility (rv / sqrt(BAR_WINDOW))
    log_amihud   log Amihud illiquidity: sum |r| / sum c v over the window
    close_loc    where the close sits in the range: 0 low, 1 high (0.5 for a bar without range)
"""

from __future__ import annotations

import numpy as np

from dualhrq.data.bars import Bars
from dualhrq.features import kernels
from dualhrq.features.kernels import f64, tail_rows

BAR_WINDOW = 20
BAR_WARMUP = BAR_WINDOW  # rows before this index lack history (NaN)

BAR_FEATURES: tuple[str, ...] = (
    "ret", "gap", "body", "range", "upper_wick", "lower_wick", "volume_z", "mom_5", "mom_20", "meanrev_z", "rv",
    "bpv", "range_vol", "ret_z", "log_amihud", "close_loc",
)
assert len(BAR_FEATURES) == kernels.BAR_WIDTH


def bar_features(bars: Bars, last: int | None = None) -> np.ndarray:
    """[n, len(BAR_FEATURES)] float64 (or its last ``last`` rows); rows before BAR_WARMUP are NaN.

    ``last`` None computes a row per bar (training, over a whole history), ``last=m`` only the last m rows
    (serving); the rows are the same either way."""
    n = len(bars.c)
    m = tail_rows(n, last)
    out = np.empty((m, kernels.BAR_WIDTH))
    kernels.bar_rows(f64(bars.o), f64(bars.h), f64(bars.l), f64(bars.c), f64(bars.v), n - m, BAR_WINDOW, out)
    return out
