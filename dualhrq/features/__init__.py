"""Every feature the model sees, computed one way for training and serving (compiled row loops).

Causality and train/serve parity rest on one property: every feature of row i is a function of a FIXED
number of bars ending at i (no expanding sums, no exponential averages). Row i is therefore the same,
bit for bit, whether it is computed over the whole history or over just the last `needs()` bars a request
carries. Rows without enough history are NaN; callers keep only complete rows.

One module per family, each naming its columns in order and documenting them: bar (the coarse tokens and most
of each fine token), position (the label rule's position state), fine (the fine token: both), regime, pattern
(the retrieval key). Their row loops live in one module, kernels (numba); beneath them the estimators over one
window and the market-rule features; stats normalises the model's inputs.
"""

from dualhrq.features.bar import BAR_FEATURES, BAR_WARMUP, BAR_WINDOW, bar_features
from dualhrq.features.estimators import bipower_variation, log_returns, realized_variance, tsrv
from dualhrq.features.fine import FINE_FEATURES, fine_features
from dualhrq.features.kernels import MU1
from dualhrq.features.market import luld_band_distance, luld_half_width
from dualhrq.features.pattern import PATTERN_SUMMARY, pattern_features
from dualhrq.features.position import (
    FLAT,
    LONG,
    POSITION_FEATURES,
    SHORT,
    UNKNOWN_STATE,
    PositionRule,
    position_features,
    state_of,
)
from dualhrq.features.regime import (
    REGIME_COARSE_WARMUP,
    REGIME_COARSE_WINDOW,
    REGIME_FEATURES,
    REGIME_WARMUP,
    REGIME_WINDOW,
    regime_features,
)
from dualhrq.features.stats import CLIP, ColumnStats, FeatureStats

__all__ = [
    "BAR_FEATURES", "BAR_WARMUP", "BAR_WINDOW", "CLIP", "FINE_FEATURES", "FLAT", "LONG", "MU1", "PATTERN_SUMMARY",
    "POSITION_FEATURES", "REGIME_COARSE_WARMUP", "REGIME_COARSE_WINDOW", "REGIME_FEATURES", "REGIME_WARMUP",
    "REGIME_WINDOW", "SHORT", "UNKNOWN_STATE", "ColumnStats", "FeatureStats", "PositionRule", "bar_features",
    "bipower_variation", "fine_features", "log_returns", "luld_band_distance", "luld_half_width",
    "pattern_features", "position_features", "realized_variance", "regime_features",
    "state_of", "tsrv",
]
