"""`dualhrq replay --bundle B --pnl`: what the exported bundle earns after the gate, and whether it decides as
the PyTorch model that `validate` and training score.

On the bundle's held-out window (the tail its training config kept out, when ``--data`` is its own dataset;
otherwise every bar with enough history), each bar is decided twice: by the bundle through the serving path
(ONNX engine, features, retrieval, decision rule) and by the bundle's own weights in PyTorch through the
checkpoint's input pipeline (`dualhrq.api.HRMPolicy`, whose inputs equal training's). Their action agreement
is the parity figure. Both action series then go through a compliance gate each, and the gate's simulated
position after every decision is filled by validation's execution model (the bundle config's
``validate.execution`` and ``data.cost_bps``): gross return, each cost term, net Sharpe and break-even.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dualhrq.compliance.gate import ComplianceGate, GateDecision
from dualhrq.compliance.replay import QuoteEvent, ReplayReport, SignalFn, replay
from dualhrq.config import ComplianceConfig
from dualhrq.data.bars import Bars, Dataset
from dualhrq.errors import DataError
from dualhrq.evaluate.execution import Fills, default_fee_bps, market_for
from dualhrq.evaluate.ledger import strict_json
from dualhrq.evaluate.metrics import periods_per_year, sharpe_ratio
from dualhrq.model.vocab import replay_instrument

if TYPE_CHECKING:  # the export and serving stacks load only when --pnl runs
    from dualhrq.export.bundle import Bundle
    from dualhrq.inputs import InputPipeline
    from dualhrq.runtime.signals import RequestWindows

AGREEMENT_FP32 = 0.995  # the bar an fp32 bundle must clear against its own weights in PyTorch


@dataclass(frozen=True)
class PnLFigures:
    """One action series after the gate, filled by the execution model over the window."""

    sharpe: float  # annualised, net
    gross_return: float  # mean log return per year
    net_return: float
    spread_cost: float  # totals over the window, log-return units
    fee_cost: float
    impact_cost: float
    turnover: float  # mean absolute executed position change per bar
    break_even_bps: float

    @classmethod
    def of(cls, fills: Fills, periods: float) -> PnLFigures:
        net = fills.net
        return cls(sharpe=sharpe_ratio(net, periods), gross_return=float(fills.gross.mean() * periods),
                   net_return=float(net.mean() * periods), spread_cost=float(fills.spread.sum()),
                   fee_cost=float(fills.fees.sum()), impact_cost=float(fills.impact.sum()),
                   turnover=float(fills.traded.mean()), break_even_bps=fills.break_even_bps())


@dataclass(frozen=True)
class PnLReport:
    bundle: str
    precision: str
    window: str  # "held-out tail" or "all bars"
    start: str
    end: str
    bars: int  # decisions compared and filled
    agreement: float  # share of bars where the bundle and PyTorch chose the same action (before the gate)
    disagreements: dict[str, int]  # "bundle->torch" pairs and their counts
    served: PnLFigures  # the bundle, after the gate
    reference: PnLFigures  # the PyTorch model, after a gate of the same rules
    execution: dict[str, Any]

    @property
    def parity_ok(self) -> bool:
        return self.precision != "fp32" or self.agreement >= AGREEMENT_FP32

    def to_dict(self) -> dict[str, Any]:
        return strict_json({**asdict(self), "parity_ok": self.parity_ok})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def to_markdown(self) -> str:
        def f(v: float, digits: int = 4) -> str:
            return f"{v:.{digits}f}" if math.isfinite(v) else "n/a"

        rows = []
        for name, p in (("bundle after the gate", self.served), ("PyTorch model after the gate", self.reference)):
            rows.append(f"| {name} | {f(p.sharpe, 3)} | {f(p.gross_return)} | {f(p.spread_cost)} | {f(p.fee_cost)} | "
                        f"{f(p.impact_cost)} | {f(p.net_return)} | {f(p.turnover, 3)} | {f(p.break_even_bps, 2)} |")
        pairs = ", ".join(f"{k} {v}" for k, v in sorted(self.disagreements.items(), key=lambda x: -x[1])) or "none"
        return "\n".join([
            f"# Replay P&L: {self.bundle} ({self.precision})", "",
            f"Window: {self.window}, {self.start} → {self.end}, {self.bars} bars. Execution: "
            + ", ".join(f"{k} {v}" for k, v in self.execution.items()) + ".", "",
            f"**Action agreement with the PyTorch model: {100 * self.agreement:.2f}%** "
            f"({'meets' if self.parity_ok else 'BELOW'} the {100 * AGREEMENT_FP32:.1f}% bar for fp32); "
            f"disagreements (bundle->PyTorch): {pairs}.", "",
            "| series | Sharpe | gross / year | spread | fees | impact | net / year | turnover | break-even bps |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            *rows,
        ]) + "\n"


def _request_windows(bars: Bars, inputs: InputPipeline) -> RequestWindows:
    """The requests the served path cuts from ``bars`` (``at(i)`` is None before bar i has enough history)."""
    from dualhrq.runtime.signals import RequestWindows

    return RequestWindows(bars, inputs.coarse_rule, inputs.needs)


def held_out_window(dataset: Dataset, bundle: Bundle) -> tuple[int, int, str]:
    """[start, end] bars decided and filled: the training config's held-out tail on one of its own datasets
    (the tail of a list starts at one time for all of them), else every bar with enough history for a
    decision."""
    bundle_config = bundle.config
    names = bundle_config.data.datasets
    if dataset.name not in names:
        bars, inputs = dataset.bars, bundle.inputs()
        windows = _request_windows(bars, inputs)
        start = next((i for i in range(len(bars) - 1) if windows.at(i) is not None), None)
        if start is None:
            coarse, fine = inputs.needs
            raise DataError(f"--data: {dataset.name}: {len(bars)} bars, too few for one decision with a return "
                            f"after it (the model reads {fine} fine and {coarse} coarse bars)")
        return start, len(bars) - 2, "all bars"
    from dualhrq.data.sources import load_datasets
    from dualhrq.data.windows import build_dataset

    windows = build_dataset(load_datasets(bundle_config.data), bundle_config.model, bundle_config.data,
                            pattern_window=bundle_config.patterns.window)
    test = windows.test[windows.instrument_index[windows.test] == names.index(dataset.name)]
    tail = windows.bar_index[test]
    return int(tail[0]), int(min(tail[-1], len(dataset.bars) - 2)), "held-out tail"


def reference_signals(bundle_path: str | Path, dataset: Dataset, instrument: str | None = None) -> SignalFn:
    """i -> (action, quantity) of the bundle's weights in PyTorch at the close of bar i, from the bars up to it,
    for the instrument (default: the dataset's) and timeframe `dualhrq.runtime.signals.signal_fn_from_bundle`
    serves them as, and HOLD where it does: before a bar has enough history for the model."""
    from dualhrq.api import HRMPolicy
    from dualhrq.export.bundle import load_bundle
    from dualhrq.model import HRM

    bundle = load_bundle(bundle_path, verify=True)
    cfg = bundle.config
    model = HRM(cfg.model)
    model.load_state_dict(bundle.state_dict())
    inputs = bundle.inputs(cfg)
    policy = HRMPolicy(model, cfg, inputs)
    instrument = replay_instrument(inputs.artifacts.instruments, instrument or dataset.instrument)
    timeframe = inputs.artifacts.timeframe
    bars = dataset.bars
    windows = _request_windows(bars, inputs)

    def signal(i: int) -> tuple[str, float]:
        if windows.at(i) is None:  # too little history: HOLD, as the served signals do
            return "HOLD", 0.0
        d = policy.decide(bars.slice(0, i + 1), instrument, timeframe)
        return d.action, float(d.quantity)

    return signal


def _positions(bars: Bars, signal: dict[int, tuple[str, float]], config: ComplianceConfig,
               events: Sequence[QuoteEvent] | None, instrument: str, tier: int,
               prior_close: float | None) -> tuple[ReplayReport, np.ndarray]:
    """Replay the cached decisions (HOLD elsewhere) through a fresh gate; the gate's position after each bar."""
    position = np.zeros(len(bars))

    def record(i: int, decision: GateDecision, after: float) -> None:
        position[i] = after

    # Only the first day's warm-up goes undecided, before any position: zero there is right.
    report = replay(bars, lambda i: signal.get(i, ("HOLD", 0.0)), events, ComplianceGate(config),
                    instrument=instrument, tier=tier, prior_close=prior_close, on_decision=record)
    return report, position


def pnl_replay(bundle_path: str | Path, dataset: Dataset, served: SignalFn, reference: SignalFn,
               config: ComplianceConfig, *, events: Sequence[QuoteEvent] | None = None, instrument: str = "REPLAY",
               tier: int = 1, prior_close: float | None = None,
               window: tuple[int, int, str] | None = None) -> tuple[ReplayReport, PnLReport]:
    """The compliance replay of the bundle's decisions over the window, and its P&L next to PyTorch's."""
    from dualhrq.export.bundle import load_bundle

    bundle = load_bundle(bundle_path, verify=False)
    cfg = bundle.config
    bars = dataset.bars
    start, end, kind = window if window is not None else held_out_window(dataset, bundle)
    if not 0 <= start <= end < len(bars) - 1:
        raise DataError(f"--pnl: window [{start}, {end}] is not inside the {len(bars)} bars (the last bar has no "
                        "return to earn)")
    served_cache = {i: served(i) for i in range(start, end + 1)}
    reference_cache = {i: reference(i) for i in range(start, end + 1)}
    report, served_pos = _positions(bars, served_cache, config, events, instrument, tier, prior_close)
    _, reference_pos = _positions(bars, reference_cache, config, events, instrument, tier, prior_close)

    idx = np.arange(start, end + 1)
    returns = np.log(bars.c[idx + 1] / bars.c[idx])
    market = market_for(cfg.validate.execution, cfg.data.cost_bps, returns, bars, idx)
    periods = periods_per_year(bars.t[idx])
    agree = [served_cache[i][0] == reference_cache[i][0] for i in idx.tolist()]
    pairs: dict[str, int] = {}
    for i in idx.tolist():
        if served_cache[i][0] != reference_cache[i][0]:
            key = f"{served_cache[i][0]}->{reference_cache[i][0]}"
            pairs[key] = pairs.get(key, 0) + 1
    ex = cfg.validate.execution
    precision = cfg.serve.precision  # what signal_fn_from_bundle's engine runs
    pnl = PnLReport(
        bundle=str(bundle_path), precision=str(precision), window=kind,
        start=str(np.datetime64(int(bars.t[start]), "ns").astype("datetime64[m]")),
        end=str(np.datetime64(int(bars.t[end]), "ns").astype("datetime64[m]")),
        bars=len(idx), agreement=float(np.mean(agree)), disagreements=pairs,
        served=PnLFigures.of(market.execute(served_pos[idx]), periods),
        reference=PnLFigures.of(market.execute(reference_pos[idx]), periods),
        execution={"fill": ex.fill, "delay_bars": ex.delay_bars, "half_spread_bps": ex.half_spread_bps,
                   "spread": ex.spread, "fee_bps_per_side": default_fee_bps(ex, cfg.data.cost_bps),
                   "impact_coef": ex.impact_coef},
    )
    return report, pnl
