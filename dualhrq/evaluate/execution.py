"""Execution: what a series of target positions earns once filled, and what each fill costs.

Sample i is decided at the close of its bar b. Its position is filled ``delay_bars`` bars later, at that
bar's close (``fill: close``) or at the next bar's open (``fill: next_open``), and is held until the next
sample's fill: a unit held earns the log return between the two fill prices. Every unit of position change
pays, in log-return units,

- half the bid-ask spread: ``half_spread_bps``, or the Corwin-Schultz estimate from the bars' highs and lows
  averaged over the ``spread_window`` bars up to the fill;
- a fee per side, ``fee_bps`` (by default half of ``data.cost_bps``, the round trip the labels assume);
- square-root market impact: ``impact_coef * sigma * sqrt(order / volume)`` per unit, with sigma the per-bar
  volatility of the closes over the ``vol_window`` bars up to the fill and the order ``|change| * order_size``
  in the units of the bars' volume, so a four times larger order pays twice as much per unit.

With a ``participation_cap`` at most that share of the fill bar's volume fills; the rest waits for the
following samples, so the executed position lags the target. A fill beyond the last bar never happens.

Costs are charged on the executed position's change, the first entry from flat included. The defaults (close,
no delay, no spread, no impact) charge the fee alone: ``position * return - |change| * fee_bps * 1e-4``, with
``fee_bps = cost_bps / 2`` per side by default (two sides make the round trip ``data.cost_bps``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dualhrq.config import ExecutionConfig
from dualhrq.data.bars import Bars
from dualhrq.errors import ConfigurationError, DataError

_CS_DENOM = 3 - 2 * math.sqrt(2)


@dataclass(frozen=True)
class Fills:
    """One series executed, per sample: the position held, its gross return and each cost term (log units)."""

    position: np.ndarray
    fill_return: np.ndarray  # what one unit held from this fill to the next earned
    gross: np.ndarray
    spread: np.ndarray
    fees: np.ndarray
    impact: np.ndarray

    @property
    def traded(self) -> np.ndarray:
        """Absolute executed position change per sample, the first entered from flat."""
        return np.abs(np.diff(self.position, prepend=0.0))

    @property
    def net(self) -> np.ndarray:
        # fees first: with no spread and no impact this is exactly `position * r - traded * fee_bps * 1e-4`
        return self.gross - self.fees - self.spread - self.impact

    def break_even_bps(self) -> float:
        """The cost per unit of turnover, in bps, that would consume the whole gross return; NaN without trades."""
        traded = float(self.traded.sum())
        return float(self.gross.sum() / traded * 1e4) if traded > 0 else float("nan")


@dataclass(frozen=True)
class Market:
    """What a fill of each sample meets, one row per sample (built by `market_for`)."""

    fill_return: np.ndarray  # log return from sample i's fill price to sample i+1's
    fee_bps: float
    half_spread_bps: np.ndarray | float = 0.0
    sigma: np.ndarray | None = None  # per-bar volatility at the fill (impact only)
    volume: np.ndarray | None = None  # volume of the bar the fill falls in
    capacity: np.ndarray | None = None  # position units that can fill at sample i; None: any
    impact_coef: float = 0.0
    order_size: float = 1.0

    def __len__(self) -> int:
        return len(self.fill_return)

    def execute(self, target: np.ndarray, idx: np.ndarray | None = None) -> Fills:
        """Fill the target positions of samples ``idx`` (all samples when None), in that order, from flat."""
        target = np.asarray(target, dtype=np.float64)
        rows = np.arange(len(self)) if idx is None else np.asarray(idx)
        if target.shape != rows.shape:
            raise DataError(f"execution: {len(target)} positions for {len(rows)} samples")
        position = target if self.capacity is None or np.isinf(self.capacity).all() else _capped(
            target, self.capacity[rows])
        r = self.fill_return[rows]
        traded = np.abs(np.diff(position, prepend=0.0))
        half_spread = self.half_spread_bps if np.isscalar(self.half_spread_bps) else self.half_spread_bps[rows]
        spread = traded * half_spread * 1e-4
        if self.impact_coef > 0:
            assert self.sigma is not None and self.volume is not None
            volume = self.volume[rows]
            with np.errstate(divide="ignore", invalid="ignore"):
                per_unit = self.impact_coef * self.sigma[rows] * np.sqrt(traded * self.order_size / volume)
            impact = np.where(traded > 0, traded * per_unit, 0.0)
        else:
            impact = np.zeros_like(traded)
        return Fills(position=position, fill_return=r, gross=position * r, spread=spread,
                     fees=traded * self.fee_bps * 1e-4, impact=impact)


def _capped(target: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """The executed path: each sample moves toward its target by at most its capacity."""
    out = np.empty_like(target)
    held = 0.0
    for i, (want, cap) in enumerate(zip(target.tolist(), capacity.tolist())):
        held += min(max(want - held, -cap), cap)
        out[i] = held
    return out


def close_fill_market(returns: np.ndarray, fee_bps: float) -> Market:
    """Fills at the close of the signal bar, earning the sample's own return and paying a fee and nothing else
    (the permuted-label control's market: its shuffled returns are no market to fill in)."""
    return Market(fill_return=np.asarray(returns, dtype=np.float64), fee_bps=fee_bps)


def default_fee_bps(cfg: ExecutionConfig, round_trip_bps: float) -> float:
    return cfg.fee_bps if cfg.fee_bps is not None else round_trip_bps / 2


def needs_bars(cfg: ExecutionConfig) -> bool:
    """Whether these settings need the bars, beyond each sample's close-to-close return."""
    return (cfg.fill != "close" or cfg.delay_bars > 0 or cfg.spread == "high_low" or cfg.impact_coef > 0
            or cfg.participation_cap is not None)


def market_for(cfg: ExecutionConfig, round_trip_bps: float, returns: np.ndarray, bars: Bars | None,
               bar_index: np.ndarray | None) -> Market:
    """The market of every sample: sample i was decided at the close of ``bars[bar_index[i]]`` and its
    close-to-close return is ``returns[i]`` (what a fill at the signal bar's close earns)."""
    fee = default_fee_bps(cfg, round_trip_bps)
    if not needs_bars(cfg):
        return Market(fill_return=np.asarray(returns, dtype=np.float64), fee_bps=fee,
                      half_spread_bps=cfg.half_spread_bps)
    if bars is None or bar_index is None:
        raise ConfigurationError("validate.execution: these fill settings need the bars of every sample, and the "
                                 "validation data came without them (dualhrq.evaluate.validate.validation_data "
                                 "provides them)")
    b = np.asarray(bar_index, dtype=np.int64)
    n = len(bars)
    fill_bar = b + cfg.delay_bars  # the bar at whose close (or after which, at the next open) the order fills
    if cfg.fill == "close":
        price, trade_bar = bars.c, fill_bar
    else:
        price, trade_bar = np.concatenate([bars.o[1:], [np.nan]]), fill_bar + 1  # price[k]: the open after bar k
    fillable = fill_bar + 1 < (n if cfg.fill == "close" else n - 1)  # the next fill must exist too
    r = np.zeros(len(b))
    k = fill_bar[fillable]
    r[fillable] = np.log(price[k + 1] / price[k])
    half_spread: np.ndarray | float = cfg.half_spread_bps
    if cfg.spread == "high_low":
        half_spread = corwin_schultz_half_spread_bps(bars, cfg.spread_window)[np.minimum(fill_bar, n - 1)]
    capacity = np.full(len(b), np.inf)
    sigma = volume = None
    if cfg.impact_coef > 0 or cfg.participation_cap is not None:
        if not np.any(bars.v > 0):
            raise ConfigurationError("validate.execution: impact_coef and participation_cap need the bars' volume, "
                                     "and these bars have none (all zero)")
        volume = bars.v[np.minimum(trade_bar, n - 1)]
        sigma = rolling_volatility(bars.c, cfg.vol_window)[np.minimum(fill_bar, n - 1)]
        capacity = np.where(volume > 0, capacity, 0.0)  # nothing fills in a bar where nothing traded
        if cfg.participation_cap is not None:
            capacity = cfg.participation_cap * volume / cfg.order_size
    capacity = np.where(fillable, capacity, 0.0)  # a fill after the last bar never happens
    return Market(fill_return=r, fee_bps=fee, half_spread_bps=half_spread, sigma=sigma, volume=volume,
                  capacity=capacity, impact_coef=cfg.impact_coef, order_size=cfg.order_size)


def rolling_volatility(close: np.ndarray, window: int) -> np.ndarray:
    """Per bar k: the standard deviation of the last ``window`` close-to-close log returns up to bar k (fewer at
    the start; 0 before two returns exist)."""
    r = np.concatenate([[np.nan], np.diff(np.log(close))])
    out = np.zeros(len(close))
    for k in range(2, len(close)):
        part = r[max(1, k - window + 1): k + 1]
        out[k] = float(np.std(part, ddof=1)) if len(part) > 1 else 0.0
    return out


def corwin_schultz_half_spread_bps(bars: Bars, window: int) -> np.ndarray:
    """Half the bid-ask spread per bar in bps, by Corwin and Schultz's high-low estimator over each pair of
    consecutive bars (negative estimates count as zero), averaged over the last ``window`` pairs up to the bar."""
    hl = np.log(bars.h / bars.l) ** 2
    beta = hl[1:] + hl[:-1]
    gamma = np.log(np.maximum(bars.h[1:], bars.h[:-1]) / np.minimum(bars.l[1:], bars.l[:-1])) ** 2
    alpha = (np.sqrt(2 * beta) - np.sqrt(beta)) / _CS_DENOM - np.sqrt(gamma / _CS_DENOM)
    spread = np.maximum(2 * (np.exp(alpha) - 1) / (1 + np.exp(alpha)), 0.0)
    pair = np.concatenate([[np.nan], spread])  # pair[k]: the estimate from bars k-1 and k
    csum = np.concatenate([[0.0], np.cumsum(np.nan_to_num(pair))])
    count = np.concatenate([[0], np.cumsum(np.isfinite(pair))])
    k = np.arange(len(bars))
    lo = np.maximum(k + 1 - window, 0)
    n = count[k + 1] - count[lo]
    with np.errstate(invalid="ignore"):
        mean = np.where(n > 0, (csum[k + 1] - csum[lo]) / np.maximum(n, 1), 0.0)
    return mean / 2 * 1e4
