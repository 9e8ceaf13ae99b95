"""Leakage checks run in every validation; each one covers a different path by which the future gets in.

- Future correlation (at lags 1/5/10/20): a feature or a model output known at sample i is
  rank-correlated with the return realised ``lag`` samples ahead (lag 1 is the sample's own next return).
  Real market features reach |ρ| of a few hundredths; beyond ``max_corr`` it is the label, not skill.
  Catches features that contain the label, centred windows and shifts the wrong way.
- Truncation: features recomputed on bars cut at random points must equal the full run's features before
  the cut. Catches full-sample normalisation, backward fills and anything else that reads later bars.
- Permuted-label control: a model re-fitted and scored on randomly permuted returns must show no skill.
  Catches predictors that read labels they should not (at predict time, or through label-derived inputs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.stats import rankdata

from dualhrq.errors import DataError
from dualhrq.evaluate.metrics import information_coefficient

# |ρ| of pure noise over m samples has standard deviation ≈ 1/√m; a flag must clear this many of them too,
# so that short samples do not raise false alarms.
NOISE_SIGMAS = 5.0


@dataclass(frozen=True)
class LeakFinding:
    check: str  # future_correlation | truncation | permuted_label
    subject: str  # the feature, predictor or cut it concerns
    detail: str
    value: float | None = None


@dataclass
class LeakageReport:
    """Outcome of each check (``passed``, ``failed`` or ``skipped: why``) and what the failing ones found."""

    checks: dict[str, str] = field(default_factory=dict)
    findings: list[LeakFinding] = field(default_factory=list)
    max_future_corr: dict[str, dict[int, float]] = field(default_factory=dict)  # subject -> lag -> max |ρ|

    @property
    def leak_found(self) -> bool:
        return bool(self.findings)

    def record(self, check: str, findings: list[LeakFinding]) -> None:
        """Fold one check's findings in; a check that ran for several subjects fails if any of them did."""
        self.findings.extend(findings)
        if findings or self.checks.get(check) == "failed":
            self.checks[check] = "failed"
        else:
            self.checks[check] = "passed"

    def skip(self, check: str, why: str) -> None:
        self.checks[check] = f"skipped: {why}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "leak_found": self.leak_found,
            "checks": self.checks,
            "findings": [asdict(f) for f in self.findings],
            "max_future_corr": {s: {str(k): v for k, v in d.items()} for s, d in self.max_future_corr.items()},
        }


def future_correlation(
    values: np.ndarray,
    returns: np.ndarray,
    *,
    lags: Sequence[int],
    max_corr: float,
    names: Sequence[str],
    index: np.ndarray | None = None,
) -> tuple[dict[int, float], list[LeakFinding]]:
    """Rank correlation of each column of ``values`` (rows are samples ``index``, default all) with the return
    ``lag`` samples ahead. Returns the largest |ρ| per lag and a finding per column and lag over the bound."""
    values = values.reshape(len(values), -1)
    if len(names) != values.shape[1]:
        raise DataError(f"future_correlation: {len(names)} names for {values.shape[1]} columns")
    index = np.arange(len(values)) if index is None else index
    worst: dict[int, float] = {}
    findings = []
    for lag in lags:
        target_idx = index + lag - 1
        ok = target_idx < len(returns)
        m = int(ok.sum())
        if m < 3:
            continue
        rho = _rank_corr(values[ok], returns[target_idx[ok]])
        worst[lag] = float(np.nanmax(np.abs(rho))) if np.isfinite(rho).any() else float("nan")
        bound = max(max_corr, NOISE_SIGMAS / np.sqrt(m))
        for col in np.flatnonzero(np.abs(np.nan_to_num(rho)) > bound):
            findings.append(
                LeakFinding(
                    check="future_correlation",
                    subject=names[col],
                    detail=f"rank correlation {rho[col]:+.3f} with the return {lag} sample(s) ahead"
                    f" (bound {bound:.3f})",
                    value=float(rho[col]),
                )
            )
    return worst, findings


def _rank_corr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman ρ of every column of x with y at once; NaN for constant columns."""
    rx = rankdata(x, axis=0)
    ry = rankdata(y)
    rx -= rx.mean(axis=0)
    ry -= ry.mean()
    denom = np.sqrt((rx**2).sum(axis=0) * (ry**2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (rx * ry[:, None]).sum(axis=0) / denom, np.nan)


@dataclass(frozen=True)
class FeatureProbe:
    """How to recompute features on a prefix of the bars: ``features_upto(c)`` computes them from the first
    ``c`` of ``n_bars`` bars alone and returns one row per bar (NaN while warming up)."""

    n_bars: int
    features_upto: Callable[[int], np.ndarray]


def truncation_check(probe: FeatureProbe, *, n_cuts: int, seed: int) -> list[LeakFinding]:
    """Recompute the features on bars cut at random points in the later three quarters; every row before a
    cut must match the full computation (NaN where it was NaN)."""
    n = probe.n_bars
    if n < 8:
        raise DataError(f"truncation_check: {n} bars are too few to cut")
    full = np.asarray(probe.features_upto(n), dtype=float)
    if full.shape[0] != n:
        raise DataError(f"truncation_check: features_upto({n}) returned {full.shape[0]} rows for {n} bars")
    findings = []
    cuts = np.random.default_rng(seed).choice(np.arange(n // 4, n), size=min(n_cuts, n - n // 4), replace=False)
    for cut in sorted(int(c) for c in cuts):
        part = np.asarray(probe.features_upto(cut), dtype=float)
        before = full[:cut]
        if part.shape != before.shape:
            findings.append(LeakFinding("truncation", f"cut at bar {cut}", f"shape {part.shape} != {before.shape}"))
            continue
        same = np.isclose(part, before, rtol=1e-9, atol=1e-12, equal_nan=True)
        if not same.all():
            row, col = np.argwhere(~same.reshape(len(same), -1))[0]
            findings.append(
                LeakFinding(
                    check="truncation",
                    subject=f"cut at bar {cut}",
                    detail=f"feature column {col} at bar {row} changes when bars after {cut} are removed",
                    value=float(row),
                )
            )
    return findings


def permuted_label_finding(name: str, forecast: np.ndarray, permuted_returns: np.ndarray) -> list[LeakFinding]:
    """A predictor fitted on permuted returns and scored against them must have an IC within noise."""
    ic = information_coefficient(forecast, permuted_returns)
    bound = NOISE_SIGMAS / np.sqrt(max(len(forecast) - 1, 1))
    if np.isnan(ic) or abs(ic) <= bound:
        return []
    return [
        LeakFinding(
            check="permuted_label",
            subject=name,
            detail=f"IC {ic:+.3f} on permuted labels over {len(forecast)} samples (noise bound {bound:.3f}):"
            " the predictor sees the labels it is scored on",
            value=ic,
        )
    ]
