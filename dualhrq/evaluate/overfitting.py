"""Probability of Backtest Overfitting by combinatorially symmetric cross-validation (Bailey, Borwein, López de
Prado and Zhu, 2017).

The trial matrix holds one column of per-sample net returns per strategy tried (HRM configurations and seeds,
the baselines), on the same samples. Its rows are cut into ``n_blocks`` contiguous blocks; every way of
choosing half of them is an in-sample set, the other half its out-of-sample set. For each, the strategy with
the best in-sample Sharpe ratio is picked and ranked among all strategies out of sample: its relative rank
w = rank / (N + 1) (rank 1 the worst) gives the logit ln(w / (1 - w)). PBO is the share of combinations whose
logit is <= 0: the in-sample pick did no better than the median strategy out of sample. The probability of
an out-of-sample loss is the share where the pick's out-of-sample Sharpe ratio is below zero.

Sharpe ratios come from per-block sums, so all C(n_blocks, n_blocks / 2) combinations cost one matrix product;
a strategy without variance on a set (e.g. never trading) has Sharpe ratio 0 there.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

from dualhrq.errors import ConfigurationError, DataError

LOGIT_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass(frozen=True)
class PBOResult:
    pbo: float
    prob_oos_loss: float
    logits: np.ndarray  # one per combination
    is_sharpe: np.ndarray  # the pick's in-sample per-sample Sharpe ratio, per combination
    oos_sharpe: np.ndarray  # and out of sample
    picks: np.ndarray  # the column picked in sample, per combination
    names: tuple[str, ...]
    n_blocks: int
    n_samples: int

    @property
    def n_combinations(self) -> int:
        return len(self.logits)

    def degradation(self) -> tuple[float, float]:
        """Slope and intercept of the pick's out-of-sample Sharpe on its in-sample Sharpe (a slope below zero:
        the better it looked in sample, the worse it did out of sample)."""
        if np.ptp(self.is_sharpe) == 0:
            return float("nan"), float("nan")
        slope, intercept = np.polyfit(self.is_sharpe, self.oos_sharpe, 1)
        return float(slope), float(intercept)

    def pick_shares(self) -> dict[str, float]:
        """How often each strategy was the in-sample pick."""
        counts = np.bincount(self.picks, minlength=len(self.names)) / self.n_combinations
        return {n: float(c) for n, c in zip(self.names, counts) if c > 0}

    def to_dict(self) -> dict[str, object]:
        slope, intercept = self.degradation()
        hist, edges = np.histogram(self.logits, bins=12)
        return {
            "pbo": self.pbo,
            "prob_oos_loss": self.prob_oos_loss,
            "n_trials": len(self.names),
            "n_blocks": self.n_blocks,
            "n_combinations": self.n_combinations,
            "n_samples": self.n_samples,
            "trials": list(self.names),
            "logit_quantiles": {str(q): float(np.quantile(self.logits, q)) for q in LOGIT_QUANTILES},
            "logit_histogram": {"edges": edges.tolist(), "counts": hist.tolist()},
            "degradation": {"slope": slope, "intercept": intercept},
            "pick_shares": self.pick_shares(),
        }


def _block_sums(matrix: np.ndarray, n_blocks: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per block: sample count [S], sums [S, N] and sums of squares [S, N] of each column centred on its overall
    mean [N] (returned last), so that the variances below lose no precision to cancellation."""
    centred = matrix - matrix.mean(axis=0)
    blocks = np.array_split(np.arange(len(matrix)), n_blocks)
    counts = np.array([len(b) for b in blocks], dtype=np.float64)
    sums = np.stack([centred[b].sum(axis=0) for b in blocks])
    squares = np.stack([(centred[b] ** 2).sum(axis=0) for b in blocks])
    return counts, sums, squares, matrix.mean(axis=0)


def _sharpe(count: np.ndarray, total: np.ndarray, squares: np.ndarray, shift: np.ndarray) -> np.ndarray:
    mean = total / count[:, None]
    var = (squares - count[:, None] * mean**2) / (count[:, None] - 1)
    sd = np.sqrt(np.maximum(var, 0.0))
    tiny = sd <= 1e-12 * np.maximum(np.abs(mean + shift), 1e-300)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(tiny, 0.0, (mean + shift) / sd)


def probability_of_backtest_overfitting(matrix: np.ndarray, names: tuple[str, ...] | list[str] = (),
                                        n_blocks: int = 16) -> PBOResult:
    """PBO of picking the best in-sample Sharpe ratio among the columns of ``matrix`` [samples, strategies]."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[1] < 2:
        raise DataError(f"PBO: expected a matrix of at least two strategies' returns, got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise DataError("PBO: the trial matrix has non-finite returns")
    if n_blocks < 2 or n_blocks % 2:
        raise ConfigurationError(f"validate.pbo_blocks: expected an even number >= 2, got {n_blocks}")
    if len(matrix) < 2 * n_blocks:
        raise DataError(f"PBO: {len(matrix)} samples are too few for {n_blocks} blocks of at least two")
    names = tuple(names) or tuple(f"trial_{j}" for j in range(matrix.shape[1]))
    if len(names) != matrix.shape[1]:
        raise DataError(f"PBO: {len(names)} names for {matrix.shape[1]} strategies")
    counts, sums, squares, shift = _block_sums(matrix, n_blocks)
    chosen = np.array([[s in c for s in range(n_blocks)] for c in combinations(range(n_blocks), n_blocks // 2)],
                      dtype=np.float64)
    is_sr = _sharpe(chosen @ counts, chosen @ sums, chosen @ squares, shift)
    rest = 1.0 - chosen
    oos_sr = _sharpe(rest @ counts, rest @ sums, rest @ squares, shift)
    rows = np.arange(len(chosen))
    picks = np.argmax(is_sr, axis=1)
    picked_oos = oos_sr[rows, picks]
    rank = 1 + (oos_sr < picked_oos[:, None]).sum(axis=1) + 0.5 * ((oos_sr == picked_oos[:, None]).sum(axis=1) - 1)
    w = rank / (matrix.shape[1] + 1)
    logits = np.log(w / (1 - w))
    return PBOResult(
        pbo=float(np.mean(logits <= 0)),
        prob_oos_loss=float(np.mean(picked_oos < 0)),
        logits=logits,
        is_sharpe=is_sr[rows, picks],
        oos_sharpe=picked_oos,
        picks=picks,
        names=names,
        n_blocks=n_blocks,
        n_samples=len(matrix),
    )
