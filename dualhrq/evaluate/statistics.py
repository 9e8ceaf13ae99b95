"""Is an out-of-sample edge real? Hansen's SPA, White's Reality Check and the Deflated Sharpe Ratio.

SPA and Reality Check come from ``arch.bootstrap`` with losses = −returns, the baseline as the benchmark and
the candidate (the HRM) as the model: a small p-value says the candidate's mean return beats the baseline's
by more than the stationary bootstrap expects by chance. arch reports three SPA p-values, which differ in how
they recentre the bootstrap for models that look worse than the benchmark: ``lower`` (recentre none: too
liberal), ``consistent`` (Hansen's recommended one) and ``upper`` (recentre all, the least favourable case).
White's Reality Check is the upper p-value *without* studentization: arch's ``RealityCheck`` class is a plain
clone of ``SPA``, so it is called with ``studentize=False`` and its ``upper`` value is White's p-value.

The Deflated Sharpe Ratio (Bailey & López de Prado, 2014) is the probability that the true Sharpe ratio
exceeds the best one expected from ``n_trials`` tries of strategies with no skill, correcting for short
samples, skew and fat tails. Sharpe ratios here are per sample (not annualised), as the formula needs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from arch.bootstrap import SPA, RealityCheck
from scipy.stats import kurtosis, norm, skew

from dualhrq.errors import ConfigurationError, DataError

EULER_GAMMA = 0.5772156649015329


@dataclass(frozen=True)
class SPAResult:
    """p-values of 'the candidate does not beat the benchmark'; all 1.0 when the two are identical."""

    lower: float
    consistent: float
    upper: float
    reality_check: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class DSRResult:
    dsr: float  # probability that the true Sharpe ratio exceeds sr0
    sharpe: float  # per-sample Sharpe ratio of the candidate
    sr0: float  # expected maximum per-sample Sharpe ratio of n_trials skill-less strategies
    n_trials: int
    n: int
    skew: float
    kurtosis: float  # Pearson (3 for a normal distribution)

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def spa_test(
    candidate: np.ndarray,
    benchmark: np.ndarray,
    *,
    reps: int,
    block_size: int | None = None,
    seed: int = 0,
) -> SPAResult:
    """SPA and Reality Check p-values of ``candidate`` returns against ``benchmark`` returns (same samples)."""
    if candidate.shape != benchmark.shape or candidate.ndim != 1:
        raise DataError(f"spa_test: candidate {candidate.shape} and benchmark {benchmark.shape} must be equal 1-D")
    if len(candidate) < 10:
        raise DataError(f"spa_test: {len(candidate)} samples are too few for a bootstrap test")
    edge = candidate - benchmark
    if np.ptp(edge) <= 1e-15 * max(np.abs(edge).max(), 1.0):
        # A constant differential has no bootstrap variance (arch would divide by zero): the answer is certain.
        p = 0.0 if edge.mean() > 0 else 1.0
        return SPAResult(lower=p, consistent=p, upper=p, reality_check=p)
    spa = SPA(-benchmark, -candidate, block_size=block_size, reps=reps, seed=seed)
    spa.compute()
    rc = RealityCheck(-benchmark, -candidate, block_size=block_size, reps=reps, studentize=False, seed=seed)
    rc.compute()
    p = spa.pvalues
    return SPAResult(
        lower=float(p["lower"]),
        consistent=float(p["consistent"]),
        upper=float(p["upper"]),
        reality_check=float(rc.pvalues["upper"]),
    )


def expected_max_sharpe(n_trials: int, sharpe_variance: float) -> float:
    """E[max SR] of ``n_trials`` independent skill-less strategies whose Sharpe ratios have this variance."""
    if n_trials < 1:
        raise ConfigurationError(f"n_trials: must be >= 1, got {n_trials}")
    if n_trials == 1:
        return 0.0
    return math.sqrt(sharpe_variance) * (
        (1 - EULER_GAMMA) * norm.ppf(1 - 1 / n_trials) + EULER_GAMMA * norm.ppf(1 - 1 / (n_trials * math.e))
    )


def probabilistic_sharpe_ratio(sharpe: float, sr0: float, n: int, skewness: float, pearson_kurtosis: float) -> float:
    """P(true SR > sr0) given an observed per-sample SR over n samples with this skew and kurtosis."""
    if n < 2:
        raise DataError(f"n: need at least 2 samples, got {n}")
    denom = 1 - skewness * sharpe + (pearson_kurtosis - 1) / 4 * sharpe**2
    if denom <= 0:
        raise DataError("probabilistic_sharpe_ratio: skew/kurtosis leave no positive variance of the Sharpe estimate")
    return float(norm.cdf((sharpe - sr0) * math.sqrt(n - 1) / math.sqrt(denom)))


def deflated_sharpe_ratio(returns: np.ndarray, trial_sharpes: np.ndarray, extra_trials: int = 0) -> DSRResult:
    """DSR of ``returns`` when it is the pick among ``trial_sharpes`` (per-sample SRs of every configuration
    tried, this one included) plus ``extra_trials`` earlier tries whose Sharpe ratios are not at hand."""
    if len(returns) < 3:
        raise DataError(f"deflated_sharpe_ratio: {len(returns)} returns are too few")
    sd = returns.std(ddof=1)
    if sd == 0:
        raise DataError("deflated_sharpe_ratio: the return series is constant, its Sharpe ratio is undefined")
    trial_sharpes = np.asarray(trial_sharpes, dtype=float)
    trial_sharpes = trial_sharpes[np.isfinite(trial_sharpes)]
    n_trials = max(len(trial_sharpes), 1) + extra_trials
    variance = float(trial_sharpes.var(ddof=1)) if len(trial_sharpes) > 1 else 0.0
    sharpe = float(returns.mean() / sd)
    g3 = float(skew(returns))
    g4 = float(kurtosis(returns, fisher=False))
    sr0 = expected_max_sharpe(n_trials, variance)
    return DSRResult(
        dsr=probabilistic_sharpe_ratio(sharpe, sr0, len(returns), g3, g4),
        sharpe=sharpe,
        sr0=sr0,
        n_trials=n_trials,
        n=len(returns),
        skew=g3,
        kurtosis=g4,
    )
