"""What every fine (L) token holds: the bar features and the label rule's position state of its bar."""

from __future__ import annotations

import numpy as np

from dualhrq.data.bars import Bars
from dualhrq.features.bar import BAR_FEATURES, bar_features
from dualhrq.features.position import POSITION_FEATURES, PositionRule, position_features

FINE_FEATURES: tuple[str, ...] = BAR_FEATURES + POSITION_FEATURES


def fine_features(bars: Bars, rule: PositionRule, last: int | None = None) -> np.ndarray:
    """[n, len(FINE_FEATURES)] float64 (or its last ``last`` rows): the bar features, then the position state."""
    return np.concatenate([bar_features(bars, last), position_features(bars.c, rule, last)], axis=1)
