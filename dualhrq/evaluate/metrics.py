"""Out-of-sample scores of a strategy: hit rate, information coefficient, Sharpe after costs, drawdown, turnover,
and the gross return with each cost term.

Returns are per-sample log returns, so they add up over time. What a series of positions earns and pays once
filled is dualhrq.evaluate.execution's; the scores here read its `Fills`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import spearmanr

from dualhrq.errors import DataError, InferenceError
from dualhrq.evaluate.execution import Fills

_NS_PER_YEAR = 365.25 * 24 * 3600 * 1e9


@dataclass(frozen=True)
class Predictions:
    """What a model says about a set of samples: a position in [-1, 1] and a forecast return (or score)."""

    position: np.ndarray
    forecast: np.ndarray

    def __post_init__(self) -> None:
        for name in ("position", "forecast"):
            a = getattr(self, name)
            if not isinstance(a, np.ndarray) or a.ndim != 1:
                raise InferenceError(f"predictions.{name} must be a 1-D numpy array")
            if not np.all(np.isfinite(a)):
                bad = int(np.argmin(np.isfinite(a)))
                raise InferenceError(f"predictions.{name} has a non-finite value at index {bad}")
        if self.position.shape != self.forecast.shape:
            raise InferenceError(
                f"predictions: position {self.position.shape} and forecast {self.forecast.shape} differ in shape"
            )
        if np.any(np.abs(self.position) > 1):
            raise InferenceError(f"predictions.position must lie in [-1, 1], got {float(np.abs(self.position).max())}")

    def __len__(self) -> int:
        return len(self.position)

    @staticmethod
    def concat(parts: list[Predictions]) -> Predictions:
        return Predictions(
            position=np.concatenate([p.position for p in parts]),
            forecast=np.concatenate([p.forecast for p in parts]),
        )


@dataclass(frozen=True)
class StrategyMetrics:
    """Scores of one out-of-sample series. NaN marks an undefined score (no trades, a constant forecast)."""

    n: int
    hit_rate: float
    ic: float  # Spearman rank correlation of forecast and realised return
    ic_low: float  # its 95% interval (independent samples assumed: overlapping labels make it too narrow)
    ic_high: float
    sharpe: float  # annualised, after costs
    annual_return: float  # mean log return per year, after costs
    max_drawdown: float  # largest peak-to-trough loss, as a fraction of the peak
    turnover: float  # mean absolute (executed) position change per sample
    cost: float  # total cost paid, in log-return units
    gross_return: float = float("nan")  # mean log return per year before costs
    spread_cost: float = 0.0  # total of each cost term, in log-return units
    fee_cost: float = 0.0
    impact_cost: float = 0.0
    break_even_bps: float = float("nan")  # cost per unit of turnover that would consume the gross return

    def to_dict(self) -> dict[str, float | int | None]:
        return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in asdict(self).items()}


def periods_per_year(t_ns: np.ndarray) -> float:
    """Samples per calendar year, from the span of the sample times (hourly FX ≈ 6,200; daily stocks ≈ 252)."""
    if len(t_ns) < 2 or t_ns[-1] <= t_ns[0]:
        raise DataError("t: need at least two increasing sample times to infer periods_per_year")
    return (len(t_ns) - 1) / ((t_ns[-1] - t_ns[0]) / _NS_PER_YEAR)


def hit_rate(position: np.ndarray, returns: np.ndarray) -> float:
    """Share of samples with a position and a non-zero return where the position had the return's sign."""
    active = (position != 0) & (returns != 0)
    if not active.any():
        return float("nan")
    return float(np.mean(np.sign(position[active]) == np.sign(returns[active])))


def information_coefficient(forecast: np.ndarray, returns: np.ndarray) -> float:
    """Spearman rank correlation; NaN when either side is constant (no ranking to compare)."""
    if len(forecast) < 3 or np.ptp(forecast) == 0 or np.ptp(returns) == 0:
        return float("nan")
    return float(spearmanr(forecast, returns).statistic)


def ic_interval(ic: float, n: int) -> tuple[float, float]:
    """95% interval of a Spearman rank correlation from n samples: Fisher z, with Fieller's variance
    1.06 / (n - 3)."""
    if not math.isfinite(ic) or n < 4:
        return float("nan"), float("nan")
    z, half = math.atanh(max(min(ic, 0.999999), -0.999999)), 1.96 * math.sqrt(1.06 / (n - 3))
    return math.tanh(z - half), math.tanh(z + half)


def sharpe_ratio(net: np.ndarray, periods: float) -> float:
    """Annualised Sharpe ratio of per-sample returns (zero risk-free rate); NaN for a riskless series."""
    sd = net.std(ddof=1) if len(net) > 1 else 0.0
    return float(net.mean() / sd * np.sqrt(periods)) if sd > 0 else float("nan")


def max_drawdown(net: np.ndarray) -> float:
    """Largest fall of the equity curve exp(cumsum(net)) from its running peak, as a fraction of that peak."""
    equity = np.concatenate([[0.0], np.cumsum(net)])
    return float(1.0 - np.exp(-(np.maximum.accumulate(equity) - equity).max()))


def compute_metrics(pred: Predictions, returns: np.ndarray, fills: Fills, *, periods: float) -> StrategyMetrics:
    """All scores of one out-of-sample series: ``returns`` are the samples' realised (close-to-close) returns,
    which the forecast is ranked against; ``fills`` is the series executed, which earns and pays."""
    if returns.shape != pred.position.shape or fills.position.shape != pred.position.shape:
        raise DataError(f"returns {returns.shape}, fills {fills.position.shape} and predictions "
                        f"{pred.position.shape} differ in length")
    net = fills.net
    traded = fills.traded
    ic = information_coefficient(pred.forecast, returns)
    ic_low, ic_high = ic_interval(ic, len(returns))
    spread, fees, impact = (float(x.sum()) for x in (fills.spread, fills.fees, fills.impact))
    return StrategyMetrics(
        n=len(returns),
        hit_rate=hit_rate(fills.position, fills.fill_return),
        ic=ic,
        ic_low=ic_low,
        ic_high=ic_high,
        sharpe=sharpe_ratio(net, periods),
        annual_return=float(net.mean() * periods) if len(net) else float("nan"),
        max_drawdown=max_drawdown(net),
        turnover=float(traded.mean()) if len(traded) else float("nan"),
        cost=fees + spread + impact,
        gross_return=float(fills.gross.mean() * periods) if len(net) else float("nan"),
        spread_cost=spread,
        fee_cost=fees,
        impact_cost=impact,
        break_even_bps=fills.break_even_bps(),
    )
