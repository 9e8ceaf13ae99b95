"""Validation over several instruments: each instrument's own walk-forward report, and the pooled one.

Each instrument is validated on its own splits against baselines fitted on that instrument alone, the HRM
trained across every instrument up to each split (dualhrq.evaluate.hrm_predictor). Pooled, every predictor
runs an equal-weight portfolio: at each bar time, the mean of its out-of-sample net returns over the
instruments tested then. The candidate is tested by SPA on those pooled returns against every predictor each
instrument's run tested it against (not its own seeds or its fail-open twin).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dualhrq.config import ValidateConfig
from dualhrq.evaluate.ledger import strict_json
from dualhrq.evaluate.metrics import max_drawdown, sharpe_ratio
from dualhrq.evaluate.report import SIGNIFICANCE, ValidationResult
from dualhrq.evaluate.statistics import SPAResult, spa_test


@dataclass(frozen=True)
class PooledFigures:
    """One predictor's equal-weight portfolio over the instruments."""

    sharpe: float
    net_per_year: float
    max_drawdown: float
    times: int  # bar times with at least one instrument tested


@dataclass(frozen=True)
class PooledResult:
    instruments: list[str]
    candidate: str
    figures: dict[str, PooledFigures]  # by predictor
    spa: dict[str, SPAResult]  # the candidate against each other predictor, on the pooled returns
    per_instrument: dict[str, str]  # instrument -> its own verdict

    def verdict(self) -> str:
        name = self.candidate.upper() if self.candidate == "hrm" else self.candidate
        if self.candidate not in self.figures:
            return f"No {name} predictor was evaluated: the pooled figures cover the baselines only."
        losers = [b for b, r in self.spa.items() if not r.consistent < SIGNIFICANCE]
        mine = self.figures[self.candidate].sharpe
        if losers:
            against = ", ".join(f"{b} (Sharpe {self.figures[b].sharpe:.3f} vs {mine:.3f}, SPA p = "
                                f"{self.spa[b].consistent:.3f})" for b in losers)
            return f"Pooled over {len(self.instruments)} instruments, the {name} does NOT beat {against}."
        return (f"Pooled over {len(self.instruments)} instruments, the {name} beats every baseline at the "
                f"{SIGNIFICANCE:.0%} level (SPA consistent p-values).")

    def to_dict(self) -> dict:
        return {"instruments": self.instruments, "candidate": self.candidate,
                "figures": {p: asdict(f) for p, f in self.figures.items()},
                "spa": {p: r.to_dict() for p, r in self.spa.items()},
                "per_instrument": self.per_instrument, "verdict": self.verdict()}


def pooled_returns(results: dict[str, ValidationResult]) -> dict[str, pd.Series]:
    """Each predictor's equal-weight portfolio returns by bar time, over the instruments tested at that time
    (the bars' close stamps: instruments stamped alike line up)."""
    frames: dict[str, list[pd.Series]] = {}
    for name, r in results.items():
        index = pd.DatetimeIndex(np.asarray(r.oos_time, dtype="datetime64[ns]"))
        for p, net in r.net_returns.items():
            frames.setdefault(p, []).append(pd.Series(np.asarray(net, np.float64), index=index, name=name))
    # A predictor that some instrument's run lacks would be averaged over fewer instruments: left out.
    everywhere = [p for p, parts in frames.items() if len(parts) == len(results)]
    return {p: pd.concat(frames[p], axis=1, sort=True).mean(axis=1) for p in everywhere}


def pool(results: dict[str, ValidationResult], vcfg: ValidateConfig, candidate: str,
         periods: float) -> PooledResult:
    """The pooled figures and the candidate's SPA tests (``periods``: bars per year)."""
    series = pooled_returns(results)
    figures = {p: PooledFigures(sharpe_ratio(s.to_numpy(), periods), float(s.mean() * periods),
                                max_drawdown(s.to_numpy()), len(s)) for p, s in series.items()}
    spa: dict[str, SPAResult] = {}
    # Tested against what every instrument's run tested it against: its seeds and fail-open twin are not rivals.
    rivals = set.intersection(*(set(r.spa) for r in results.values()))
    if candidate in series:
        frame = pd.concat(series, axis=1, sort=True).fillna(0.0)  # a time one predictor has and another not: flat
        for b in series:
            if b in rivals:
                spa[b] = spa_test(frame[candidate].to_numpy(), frame[b].to_numpy(), reps=vcfg.bootstrap_reps,
                                  block_size=vcfg.bootstrap_block or None, seed=vcfg.seed)
    return PooledResult(list(results), candidate, figures, spa, {k: r.verdict() for k, r in results.items()})


def write_pooled_report(pooled: PooledResult, results: dict[str, ValidationResult], out: Path) -> Path:
    """OUT/report.md (the pooled table, each instrument's headline and a link to its report) and report.json."""
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# Validation over {len(pooled.instruments)} instruments: {', '.join(pooled.instruments)}", "",
             f"**{pooled.verdict()}**", "",
             "Pooled: every predictor as an equal-weight portfolio of its out-of-sample net returns over the "
             "instruments tested at each bar time (each instrument on its own splits, costs on).", "",
             f"| predictor | Sharpe | net / year | max DD | bar times | SPA p ({pooled.candidate} vs) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for p, f in sorted(pooled.figures.items(), key=lambda kv: -kv[1].sharpe):
        p_value = f"{pooled.spa[p].consistent:.3f}" if p in pooled.spa else "-"
        lines.append(f"| {p} | {f.sharpe:.3f} | {f.net_per_year:+.4f} | {f.max_drawdown:.3f} | {f.times} | "
                     f"{p_value} |")
    lines += ["", "## Per instrument", "",
              f"| instrument | {pooled.candidate} Sharpe | best baseline (Sharpe) | verdict | report |",
              "| --- | ---: | --- | --- | --- |"]
    for name, r in results.items():
        others = {p: m.sharpe for p, m in r.overall.items() if p != pooled.candidate and not p.startswith("hrm")}
        best = max(others, key=others.get) if others else "-"
        mine = r.overall.get(pooled.candidate)
        lines.append(f"| {name} | {'-' if mine is None else f'{mine.sharpe:.3f}'} | "
                     f"{best} ({others.get(best, float('nan')):.3f}) | {r.verdict()} | [{name}]({name}/report.md) |")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    (out / "report.json").write_text(json.dumps(strict_json(pooled.to_dict()), indent=2, allow_nan=False))
    return path
