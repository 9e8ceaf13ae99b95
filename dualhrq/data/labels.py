"""Training targets for a sample taken at fine bar i (its time t[i]), and when each becomes known.

- out_b, the next fine-bar return: log(c[i+h] / c[i]), h = data.label_horizon; known at t[i+h].
- out_a, the next coarse-period return: log(c[j] / c[i]), j the first fine bar at least one coarse period
  after t[i] (the return over the coming coarse period, whatever the phase of i within the current one);
  known at t[j].
- action, from the forward return f = out_b against a cost-adjusted threshold
  theta_i = cost + k * sigma_i * sqrt(h)  (cost = data.cost_bps / 10,000 round trip, k =
  data.action_vol_threshold, sigma_i below): a move must pay the cost and stand out of the noise. The
  position a holder has is the one the same rule opened a horizon ago: long if the trailing return
  b = log(c[i] / c[i-h]) > theta_{i-h}, short if b < -theta_{i-h}, else flat (b is exactly the forward
  return the rule saw at i-h, and it is known at t[i]: no look-ahead). Then

      flat:   f > theta -> BUY          f < -theta -> SELL          otherwise HOLD
      long:   f < -theta -> CLOSE_LONG  (the move turns against the long)   otherwise HOLD (keep it)
      short:  f > theta -> CLOSE_SHORT  (the move turns against the short)  otherwise HOLD (keep it)

- quantity in [0, 1): tanh of the move net of cost in units of the volatility expected over the horizon,
  tanh(max(|f| - c, 0) / (sigma_i * sqrt(h))), sigma_i the per-bar realized volatility of the BAR_WINDOW
  returns up to i: big, clean moves ask for size; moves inside the cost or the noise ask for none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dualhrq.config import DataConfig
from dualhrq.data.bars import Bars
from dualhrq.errors import ConfigurationError
from dualhrq.features import FLAT, LONG, SHORT, UNKNOWN_STATE, PositionRule
from dualhrq.model.vocab import ACTIONS

BUY, SELL, HOLD, CLOSE_LONG, CLOSE_SHORT = (ACTIONS.index(a) for a in
                                            ("BUY", "SELL", "HOLD", "CLOSE_LONG", "CLOSE_SHORT"))
UNKNOWN = -1  # action of a row whose label lies beyond the data


@dataclass(frozen=True)
class Labels:
    """Per fine bar; rows with ``valid`` False have no label yet (NaN / UNKNOWN)."""

    out_a: np.ndarray  # float64
    out_b: np.ndarray  # float64
    action: np.ndarray  # int64 index into ACTIONS
    quantity: np.ndarray  # float64 in [0, 1)
    t_known: np.ndarray  # int64: when every label of the row is known (0 where not valid)
    valid: np.ndarray  # bool
    state: np.ndarray  # int64 the label rule's position state (dualhrq.features.PositionRule)


def make_labels(fine: Bars, coarse_period_ns: int, data: DataConfig) -> Labels:
    """Labels of every fine bar (see the module docstring), by data.label_horizon, cost_bps and
    action_vol_threshold."""
    horizon, cost_bps = data.label_horizon, data.cost_bps
    for name, low in (("label_horizon", 1), ("cost_bps", 0), ("action_vol_threshold", 0)):
        if getattr(data, name) < low:
            raise ConfigurationError(f"data.{name}: must be >= {low}, got {getattr(data, name)}")
    n = len(fine)
    lc = np.log(fine.c)
    i = np.arange(n)
    ahead = i + horizon
    has_b = ahead < n
    out_b = np.full(n, np.nan)
    out_b[has_b] = lc[ahead[has_b]] - lc[has_b]
    j = np.searchsorted(fine.t, fine.t + coarse_period_ns, side="left")
    has_a = j < n
    out_a = np.full(n, np.nan)
    out_a[has_a] = lc[j[has_a]] - lc[has_a]

    cost = cost_bps * 1e-4
    rule = PositionRule.from_config(data)
    sigma, theta = rule.sigma(fine.c), rule.theta(fine.c)
    state = rule.states(fine.c)
    flat = state == FLAT
    action = np.full(n, HOLD, dtype=np.int64)
    action[flat & (out_b > theta)] = BUY
    action[flat & (out_b < -theta)] = SELL
    action[(state == LONG) & (out_b < -theta)] = CLOSE_LONG
    action[(state == SHORT) & (out_b > theta)] = CLOSE_SHORT

    edge = np.maximum(np.abs(out_b) - cost, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        quantity = np.where(edge > 0, np.tanh(edge / sigma), 0.0)  # sigma 0 with an edge: full size

    valid = has_a & has_b & (state != UNKNOWN_STATE) & np.isfinite(sigma)
    t_known = np.zeros(n, dtype=np.int64)
    t_known[valid] = np.maximum(fine.t[ahead[valid]], fine.t[j[valid]])
    action[~valid] = UNKNOWN
    for a in (out_a, out_b, quantity):
        a[~valid] = np.nan
    return Labels(out_a, out_b, action, quantity, t_known, valid, state)
