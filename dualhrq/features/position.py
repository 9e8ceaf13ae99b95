"""The label rule's position state as features: the side a holder of the rule is on at each bar.

The action labels (dualhrq.data.labels) depend on the position a holder of the rule has: the one the same rule
opened a horizon ago. It is a function of past bars only, so the model gets it as fine-token columns instead of
having to re-derive it from returns and volatilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dualhrq.features import kernels
from dualhrq.features.bar import BAR_WINDOW
from dualhrq.features.kernels import f64, tail_rows

FLAT, LONG, SHORT = 0, 1, 2
UNKNOWN_STATE = -1  # not enough history for the rule's threshold a horizon ago

# column name -> the state it is 1.0 in (0.0 in the others; flat is the row without a 1.0)
POSITION_SIDES: dict[str, int] = {"state_long": LONG, "state_short": SHORT}
POSITION_FEATURES: tuple[str, ...] = tuple(POSITION_SIDES)
assert tuple(POSITION_SIDES.values()) == (LONG, SHORT)  # the order kernels.position_rows lays them out in


@dataclass(frozen=True)
class PositionRule:
    """The label rule's thresholds: a move must pay the round-trip cost and clear ``vol_threshold`` horizon
    volatilities, theta_i = cost + k * sigma_i * sqrt(h) (sigma_i the per-bar realized volatility of the
    BAR_WINDOW returns up to i). The state at i is long if log(c[i] / c[i-h]) > theta_{i-h}, short if it is
    below -theta_{i-h}, else flat: exactly the forward return the rule saw a horizon ago."""

    horizon: int = 1
    cost_bps: float = 1.0
    vol_threshold: float = 0.5

    @classmethod
    def from_config(cls, data_cfg: Any) -> PositionRule:
        """From a DataConfig (label_horizon, cost_bps, action_vol_threshold)."""
        return cls(data_cfg.label_horizon, data_cfg.cost_bps, data_cfg.action_vol_threshold)

    @property
    def warmup(self) -> int:
        """Rows before this index have no state (the threshold a horizon ago needs BAR_WINDOW returns)."""
        return BAR_WINDOW + self.horizon

    def sigma(self, close: np.ndarray) -> np.ndarray:
        """[n] the volatility expected over the horizon at each bar (NaN until BAR_WINDOW returns exist)."""
        return self._theta(close, 0.0, 1.0)

    def theta(self, close: np.ndarray) -> np.ndarray:
        """[n] the threshold a move must clear at each bar (NaN until BAR_WINDOW returns exist)."""
        return self._theta(close, self.cost_bps, self.vol_threshold)

    def _theta(self, close: np.ndarray, cost_bps: float, vol_threshold: float) -> np.ndarray:
        lc = np.log(f64(close))  # numpy's log, as the labels' forward returns use
        out = np.empty(len(lc))
        kernels.theta_rows(lc, 0, BAR_WINDOW, self.horizon, cost_bps, vol_threshold, out)
        return out

    def states(self, close: np.ndarray, last: int | None = None) -> np.ndarray:
        """[n] (or the last ``last``) int64 FLAT/LONG/SHORT, UNKNOWN_STATE without enough history. Each row
        reads the bars from i - warmup to i only, so it is the same over a whole history or a short tail."""
        m = tail_rows(len(close), last)
        log_close = self.log_closes(close, m)
        out = np.empty(m, np.int64)
        kernels.state_rows(log_close, len(log_close) - m, BAR_WINDOW, self.horizon, self.cost_bps,
                           self.vol_threshold, FLAT, LONG, SHORT, UNKNOWN_STATE, out)
        return out

    def log_closes(self, close: np.ndarray, m: int) -> np.ndarray:
        """numpy's log of the closes that the states of the last ``m`` bars read (as the labels' forward returns
        use numpy's log, not the compiled one): from ``warmup`` bars before them."""
        c = f64(close)
        return np.log(c[max(0, len(c) - m - self.warmup):])


def position_features(close: np.ndarray, rule: PositionRule, last: int | None = None) -> np.ndarray:
    """[n, len(POSITION_FEATURES)] float64 (or the last ``last`` rows); NaN where the state is unknown."""
    state = rule.states(close, last)
    out = np.empty((len(state), kernels.POSITION_WIDTH))
    kernels.position_rows(state, LONG, SHORT, UNKNOWN_STATE, out)
    return out


def state_of(position_columns: np.ndarray) -> int:
    """The state a `position_features` row encodes (FLAT, LONG, SHORT): serving reads it off the columns it
    has computed anyway instead of computing the state again."""
    flags = f64(position_columns)
    if flags.shape != (kernels.POSITION_WIDTH,):  # the compiled read is unchecked
        raise ValueError(f"position columns: expected {kernels.POSITION_WIDTH} values, got shape {list(flags.shape)}")
    return int(kernels.state_of_flags(flags, LONG, SHORT, FLAT))
