"""The validation report: Markdown for people, JSON for programs, an equity-curve PNG, all from one result.

The report never hides a loss: when the HRM does not beat a baseline, its verdict says so in a plain sentence.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on servers without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dualhrq.evaluate.leakage import LeakageReport  # noqa: E402
from dualhrq.evaluate.ledger import Trial, samples_hash, strict_json  # noqa: E402
from dualhrq.evaluate.metrics import StrategyMetrics  # noqa: E402
from dualhrq.evaluate.overfitting import LOGIT_QUANTILES, PBOResult  # noqa: E402
from dualhrq.evaluate.statistics import DSRResult, SPAResult  # noqa: E402

SIGNIFICANCE = 0.05  # SPA consistent p-value below which an edge counts as real
_METRIC_COLUMNS = ("hit_rate", "ic", "ic_low", "ic_high", "sharpe", "annual_return", "max_drawdown", "turnover")


@dataclass(frozen=True)
class SplitInfo:
    index: int
    n_train: int
    n_test: int
    train_start: str
    train_end: str
    test_start: str
    test_end: str
    test_groups: tuple[int, ...] = ()


@dataclass(frozen=True)
class Comparison:
    """Two predictors on the same splits, e.g. the HRM with patterns against its regime-only path."""

    a: str
    b: str
    spa: SPAResult  # does a beat b?


@dataclass
class ValidationResult:
    dataset: str
    scheme: str
    settings: dict[str, Any]
    candidate: str  # the predictor the statistics test against the others (the HRM)
    splits: list[SplitInfo]
    per_split: dict[str, list[StrategyMetrics]]
    overall: dict[str, StrategyMetrics]
    oos_time: np.ndarray  # ns timestamps of the concatenated out-of-sample series
    net_returns: dict[str, np.ndarray]  # per predictor, aligned with oos_time
    leakage: LeakageReport
    spa: dict[str, SPAResult] = field(default_factory=dict)  # baseline -> candidate vs baseline
    dsr: dict[str, DSRResult] = field(default_factory=dict)
    path_sharpes: dict[str, list[float]] = field(default_factory=dict)  # CPCV only
    comparisons: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    positions: dict[str, np.ndarray] = field(default_factory=dict)  # out-of-sample target positions, per predictor
    seeds: list[str] = field(default_factory=list)  # the candidate and its reruns with other seeds
    pbo: PBOResult | None = None
    earlier_trials: int = 0  # strategies from the run ledger that the DSR counted

    @property
    def samples_hash(self) -> str:
        return samples_hash(self.oos_time)

    def trials(self) -> list[Trial]:
        """This run's strategies, for the run ledger."""
        return [Trial(p, self.samples_hash, self.dsr[p].sharpe if p in self.dsr else float("nan"), pos)
                for p, pos in self.positions.items()]

    def summary(self) -> dict[str, Any]:
        """The figures the run ledger keeps: every predictor's overall scores, DSR and the PBO."""
        return strict_json({
            "overall": {p: m.to_dict() for p, m in self.overall.items()},
            "dsr": {p: r.dsr for p, r in self.dsr.items()},
            "n_trials": next(iter(self.dsr.values())).n_trials if self.dsr else None,
            "pbo": self.pbo.pbo if self.pbo is not None else None,
            "prob_oos_loss": self.pbo.prob_oos_loss if self.pbo is not None else None,
            "leak_found": self.leak_found,
        })

    def seed_spread(self) -> dict[str, dict[str, float]]:
        """Mean and standard deviation over the seeds of each headline score."""
        if len(self.seeds) < 2:
            return {}
        out = {}
        for k in ("sharpe", "annual_return", "ic", "hit_rate", "turnover"):
            v = np.array([getattr(self.overall[p], k) for p in self.seeds], dtype=float)
            out[k] = {"mean": float(np.nanmean(v)), "std": float(np.nanstd(v, ddof=1)),
                      "min": float(np.nanmin(v)), "max": float(np.nanmax(v))}
        return out

    @property
    def leak_found(self) -> bool:
        return self.leakage.leak_found

    @property
    def has_candidate(self) -> bool:
        return self.candidate in self.overall

    def verdict(self) -> str:
        """One plain sentence on whether the candidate's edge over the baselines is real."""
        name = self.candidate.upper() if self.candidate == "hrm" else self.candidate
        if self.leak_found:
            return "Leakage was found (see the leakage checks): these figures support no conclusion."
        if not self.has_candidate:
            return f"No {name} predictor was evaluated: this report covers the baselines only."
        if not self.spa:
            return f"The {name} was evaluated without any baseline to compare it with."
        losers = [b for b, r in self.spa.items() if not r.consistent < SIGNIFICANCE]
        dsr = self.dsr.get(self.candidate)
        if losers:
            against = ", ".join(
                f"{b} (Sharpe {_fmt(self.overall[b].sharpe)} vs {_fmt(self.overall[self.candidate].sharpe)},"
                f" SPA p = {_fmt(self.spa[b].consistent)})"
                for b in losers
            )
            return f"The {name} does NOT beat the baselines: no significant edge over {against}."
        if dsr is not None and dsr.dsr < 1 - SIGNIFICANCE:
            return (
                f"The {name} beats every baseline by SPA, but its Deflated Sharpe Ratio is {_fmt(dsr.dsr)}:"
                f" over {dsr.n_trials} configurations tried, its Sharpe ratio is not convincingly above luck."
            )
        if self.pbo is not None and self.pbo.pbo >= 0.5:
            return (
                f"The {name} beats every baseline by SPA, but the probability of backtest overfitting is"
                f" {_fmt(self.pbo.pbo)}: picking the best of the {len(self.pbo.names)} trials in sample does no"
                " better than the median out of sample."
            )
        return f"The {name} beats every baseline at the {SIGNIFICANCE:.0%} level (SPA consistent p-values)."

    def to_dict(self) -> dict[str, Any]:
        return strict_json(
            {
                "dataset": self.dataset,
                "scheme": self.scheme,
                "settings": self.settings,
                "candidate": self.candidate,
                "verdict": self.verdict(),
                "leakage": self.leakage.to_dict(),
                "splits": [s.__dict__ for s in self.splits],
                "per_split": {p: [m.to_dict() for m in ms] for p, ms in self.per_split.items()},
                "overall": {p: m.to_dict() for p, m in self.overall.items()},
                "spa": {b: r.to_dict() for b, r in self.spa.items()},
                "dsr": {p: r.to_dict() for p, r in self.dsr.items()},
                "path_sharpes": self.path_sharpes,
                "comparisons": [{"a": c.a, "b": c.b, "spa": c.spa.to_dict()} for c in self.comparisons],
                "pbo": self.pbo.to_dict() if self.pbo is not None else None,
                "seed_spread": self.seed_spread(),
                "seeds": self.seeds,
                "earlier_trials": self.earlier_trials,
                "notes": self.notes,
            }
        )


def _fmt(v: float | int | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return str(v) if isinstance(v, int) else f"{v:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def _metric_row(m: StrategyMetrics) -> list[str]:
    return [_fmt(getattr(m, c)) for c in _METRIC_COLUMNS]


def render_markdown(result: ValidationResult, plot_name: str | None) -> str:
    """The human-readable report, section by section; a section with nothing to show is left out."""
    sections = [
        _header(result),
        _leakage_section(result.leakage),
        _overall_section(result),
        _costs_section(result.overall),
        _cpcv_paths_section(result.path_sharpes),
        _plot_section(plot_name),
        _spa_section(result),
        _dsr_section(result.dsr),
        _pbo_section(result),
        _seed_spread_section(result),
        *(_comparison_section(result, c) for c in result.comparisons),
        _per_split_section(result),
    ]
    return "\n".join(line for section in sections for line in section) + "\n"


def _header(result: ValidationResult) -> list[str]:
    return [
        f"# Validation report: {result.dataset}",
        "",
        f"**Verdict.** {result.verdict()}",
        "",
        f"Scheme: {result.scheme}, {len(result.splits)} splits; settings: "
        + ", ".join(f"{k} = {v}" for k, v in result.settings.items())
        + ".",
        "Every setting was fixed before the run; nothing was tuned on the test windows.",
        *(f"\n> {note}" for note in result.notes),
    ]


def _leakage_section(leakage: LeakageReport) -> list[str]:
    lines = ["", "## Leakage checks", "", *_table(["check", "outcome"], [[c, o] for c, o in leakage.checks.items()])]
    worst = leakage.max_future_corr
    lags = sorted({lag for d in worst.values() for lag in d})
    if lags:
        lines += ["", "Largest |rank correlation| with the return k samples ahead (features: over all columns):", ""]
        rows = [[subject, *(_fmt(d.get(k)) for k in lags)] for subject, d in worst.items()]
        lines += _table(["subject", *(f"k = {k}" for k in lags)], rows)
    if leakage.findings:
        lines += ["", "**Leakage found — the figures below are not to be trusted.**", ""]
        lines += [f"- {f.check}: {f.subject}: {f.detail}" for f in leakage.findings]
    return lines


def _overall_section(result: ValidationResult) -> list[str]:
    return ["", "## Out of sample, all splits together", "", *_table(
        ["predictor", *_METRIC_COLUMNS, "DSR"],
        [
            [p, *_metric_row(m), _fmt(result.dsr[p].dsr) if p in result.dsr else "n/a"]
            for p, m in result.overall.items()
        ],
    )]


def _costs_section(overall: dict[str, StrategyMetrics]) -> list[str]:
    return [
        "", "## Execution costs", "",
        "Gross and net are mean log returns per year; each cost is the total over the series, in log-return"
        " units. Break-even: the cost per unit of turnover, in bps, that would consume the gross return.", "",
        *_table(
            ["predictor", "gross / year", "spread", "fees", "impact", "net / year", "turnover", "break-even bps"],
            [[p, _fmt(m.gross_return, 4), _fmt(m.spread_cost, 4), _fmt(m.fee_cost, 4), _fmt(m.impact_cost, 4),
              _fmt(m.annual_return, 4), _fmt(m.turnover), _fmt(m.break_even_bps, 2)] for p, m in overall.items()],
        ),
    ]


def _cpcv_paths_section(path_sharpes: dict[str, list[float]]) -> list[str]:
    """CPCV only: how far the Sharpe ratio varies over the backtest paths, the overall figures being path 0's."""
    if not path_sharpes:
        return []
    return ["", "CPCV backtest paths, Sharpe per path:", "", *_table(
        ["predictor", "mean", "std", "min", "max"],
        [[p, *(_fmt(f(v)) for f in (np.mean, np.std, np.min, np.max))] for p, v in path_sharpes.items()],
    )]


def _plot_section(plot_name: str | None) -> list[str]:
    return ["", f"![equity curves]({plot_name})"] if plot_name else []


def _spa_section(result: ValidationResult) -> list[str]:
    if not result.spa:
        return []
    return [
        "", f"## {result.candidate} against each baseline (SPA and White's Reality Check)", "",
        "p-values of 'the candidate does not beat the baseline' (losses = −returns after costs, stationary"
        " bootstrap). Reality Check: White's test, the un-studentized upper p-value.",
        "",
        *_table(
            ["baseline", "SPA lower", "SPA consistent", "SPA upper", "Reality Check"],
            [[b, *(_fmt(x) for x in (r.lower, r.consistent, r.upper, r.reality_check))] for b, r in result.spa.items()],
        ),
    ]


def _dsr_section(dsr: dict[str, DSRResult]) -> list[str]:
    if not dsr:
        return []
    return ["", "## Deflated Sharpe Ratio", "", *_table(
        ["predictor", "DSR", "SR per sample", "SR0 (expected max of luck)", "trials", "skew", "kurtosis"],
        [
            [p, _fmt(r.dsr), _fmt(r.sharpe, 4), _fmt(r.sr0, 4), str(r.n_trials), _fmt(r.skew, 2),
             _fmt(r.kurtosis, 2)]
            for p, r in dsr.items()
        ],
    )]


def _pbo_section(result: ValidationResult) -> list[str]:
    pbo = result.pbo
    if pbo is None:
        return []
    slope, intercept = pbo.degradation()
    earlier = len(pbo.names) - len(result.net_returns)
    quantiles = [float(np.quantile(pbo.logits, q)) for q in LOGIT_QUANTILES]
    return [
        "", "## Probability of backtest overfitting (CSCV)", "",
        f"Over {len(pbo.names)} trials on these samples ({earlier} of them from earlier runs in the run"
        f" ledger), {pbo.n_blocks} blocks, {pbo.n_combinations} combinations: "
        f"**PBO {_fmt(pbo.pbo)}**, probability of an out-of-sample loss {_fmt(pbo.prob_oos_loss)}; "
        f"out-of-sample Sharpe of the pick = {_fmt(slope)} x in-sample + {_fmt(intercept, 4)}"
        " (per sample).", "",
        *_table([f"logit q{int(q * 100)}" for q in LOGIT_QUANTILES], [[_fmt(v) for v in quantiles]]),
        "", "In-sample pick, share of combinations: "
        + ", ".join(f"{n} {_fmt(v, 2)}" for n, v in sorted(pbo.pick_shares().items(), key=lambda x: -x[1]))
        + ".",
    ]


def _seed_spread_section(result: ValidationResult) -> list[str]:
    spread = result.seed_spread()
    if not spread:
        return []
    return ["", f"## Spread over {len(result.seeds)} seeds ({', '.join(result.seeds)})", "", *_table(
        ["score", "mean", "std", "min", "max"],
        [[k, *(_fmt(v[s], 4) for s in ("mean", "std", "min", "max"))] for k, v in spread.items()],
    )]


def _comparison_section(result: ValidationResult, c: Comparison) -> list[str]:
    a, b = result.overall[c.a], result.overall[c.b]
    difference = [_fmt(getattr(a, k) - getattr(b, k)) for k in _METRIC_COLUMNS]
    rows = [[c.a, *_metric_row(a)], [c.b, *_metric_row(b)], ["difference", *difference]]
    return [
        "", f"## {c.a} against {c.b} on the same splits", "",
        *_table(["predictor", *_METRIC_COLUMNS], rows),
        "", f"SPA p-values that {c.a} does not beat {c.b}: lower {_fmt(c.spa.lower)},"
        f" consistent {_fmt(c.spa.consistent)}, upper {_fmt(c.spa.upper)}.",
    ]


def _per_split_section(result: ValidationResult) -> list[str]:
    header = ["split", "train", "test", "n train", "n test", "predictor", *_METRIC_COLUMNS]
    rows = [
        [str(info.index), f"{info.train_start} → {info.train_end}", f"{info.test_start} → {info.test_end}",
         str(info.n_train), str(info.n_test), p, *_metric_row(ms[k])]
        for k, info in enumerate(result.splits)
        for p, ms in result.per_split.items()
    ]
    return ["", "## Per split", "", *_table(header, rows)]


def plot_equity(result: ValidationResult, path: Path) -> None:
    """Cumulative net log return of each predictor over the out-of-sample series."""
    fig, ax = plt.subplots(figsize=(10, 5))
    x = result.oos_time.astype("datetime64[ns]")
    for p, net in result.net_returns.items():
        ax.plot(x, np.cumsum(net), label=p, linewidth=2.0 if p == result.candidate else 1.0)
    ax.set_title(f"{result.dataset}: out-of-sample equity, after costs")
    ax.set_ylabel("cumulative log return")
    ax.axhline(0.0, color="grey", linewidth=0.5)
    ax.legend(loc="best")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(result: ValidationResult, out_dir: Path) -> dict[str, Path]:
    """Write report.md, report.json and equity.png into ``out_dir``; returns their paths by kind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out_dir / "report.md", "json": out_dir / "report.json", "plot": out_dir / "equity.png"}
    plot_equity(result, paths["plot"])
    paths["markdown"].write_text(render_markdown(result, paths["plot"].name))
    paths["json"].write_text(json.dumps(result.to_dict(), indent=2, allow_nan=False))
    return paths
