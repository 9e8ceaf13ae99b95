"""The model inputs of a stream's newest fine bars in one compiled call: what an `append` computes.

An append needs the fine tokens of its new bars, the regime row and the retrieval key of the newest one, all
normalised. Each family's own function (bar, position, regime, pattern, then stats) gives them in a dozen
calls whose cost, on a window this small, is the calls and not the arithmetic; `kernels.newest_rows` runs the
same kernels and the same normalisation in one, so the rows are bit for bit those of the families' functions.
"""

from __future__ import annotations

import numpy as np

from dualhrq.data.bars import Bars
from dualhrq.features import kernels
from dualhrq.features.bar import BAR_WINDOW
from dualhrq.features.fine import FINE_FEATURES
from dualhrq.features.kernels import f64, tail_rows
from dualhrq.features.position import FLAT, LONG, SHORT, UNKNOWN_STATE, PositionRule
from dualhrq.features.regime import REGIME_FEATURES, REGIME_RULE, coarse_columns
from dualhrq.features.stats import CLIP, FeatureStats

INCOMPLETE = ("fine", "regime", "pattern")  # what `newest_rows` names when a row has NaN despite enough bars


def newest_rows(fine: Bars, coarse: Bars, k: int, rule: PositionRule, stats: FeatureStats,
                pattern_window: int) -> tuple[np.ndarray, int, np.ndarray, np.ndarray, str | None]:
    """(fine tokens float32 [k, FINE_FEATURES] of the last k fine bars, the label rule's state at the last one,
    its regime row float32 [REGIME_FEATURES] and its pattern row float32 [pattern_window + 5], the first of
    INCOMPLETE holding a NaN or None): ``stats.fine.apply(fine_features(fine, rule, k))``, `state_of` its last
    row, ``stats.regime.apply(regime_features(fine, coarse, 1)[0])`` and ``pattern_features(fine,
    pattern_window, 1)[0]`` as float32, in one call. ``coarse``: the coarse bars closed by the last fine bar."""
    c = f64(fine.c)
    k = tail_rows(len(c), k)
    tokens = np.empty((k, len(FINE_FEATURES)), np.float32)
    regime = np.empty(len(REGIME_FEATURES), np.float32)
    pattern = np.empty(pattern_window + kernels.PATTERN_SUMMARY_WIDTH, np.float32)
    state, incomplete = kernels.newest_rows(
        (np.ascontiguousarray(fine.t, np.int64), f64(fine.o), f64(fine.h), f64(fine.l), c, f64(fine.v),
         rule.log_closes(c, k)),
        coarse_columns(coarse),
        (BAR_WINDOW, rule.horizon, rule.cost_bps, rule.vol_threshold, FLAT, LONG, SHORT, UNKNOWN_STATE),
        REGIME_RULE, (stats.fine.mean, stats.fine.std, stats.regime.mean, stats.regime.std, CLIP),
        tokens, regime, pattern)
    return tokens, int(state), regime, pattern, None if incomplete < 0 else INCOMPLETE[incomplete]
