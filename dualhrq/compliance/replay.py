"""The replay core: historical bars (and optional quotes) through the compliance gate, re-checked by an
independent checker, with a report of state transitions, blocked actions and violations.

How bars become market snapshots (bars carry no quotes and no trade times):
- A bar's ``t`` is its close time (dualhrq.data.bars). An intraday bar spans [t - Δ, t) with Δ the gap
  to the previous bar (capped at the median gap); a daily bar (median gap of 20 h or more) spans the
  regular session of its ET trading day (the day of t - 1 ns, so 16:00 ET and next-midnight-UTC stamps both
  name the right day).
- Each bar prints four trades across its span: the open at the start, the low and the high in between
  (low first on an up bar), the close 1 ns before the end. The signal for bar i is checked at the close.
- Quotes: the latest quote event within the bar, at or before the print, when there is one; otherwise a
  symmetric spread of ``spread_bps`` around the print (a quote from an earlier bar is stale by then). Quote
  events are fed to the gate as snapshots too.
- The prior close of a day is the close of the last bar of an earlier day. Bars of the first day are used
  only for that close (``warmup_bars``) unless ``prior_close`` is given; quote events on a day without a
  prior close are skipped (``skipped_events``).
"""

from __future__ import annotations

import json
import math
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np

from dualhrq.compliance.checker import ViolationChecker
from dualhrq.compliance.gate import LULD_OFF, REASONS, ComplianceGate, GateDecision, MarketSnapshot
from dualhrq.compliance.luld import NORMAL
from dualhrq.compliance.sessions import session_for_day, session_of
from dualhrq.data.bars import T_MAX_NS, T_MIN_NS, Bars
from dualhrq.data.market_rules import MARKET_TZ, RULES_VERSION
from dualhrq.data.resample import SECOND_NS
from dualhrq.errors import ConfigurationError, DataError

SignalFn = Callable[[int], tuple[str, float]]
# Told of every decision: bar i, what left the gate, and the gate's simulated position after it.
OnDecision = Callable[[int, GateDecision, float], None]
# Bar i's decision as another gate made it (a server's, for `replay --connect`) given the market at its close.
Decide = Callable[[int, MarketSnapshot], GateDecision]

_DAILY_GAP_NS = 20 * 3600 * SECOND_NS


@dataclass(frozen=True, slots=True)
class QuoteEvent:
    """A national best bid and offer with the last trade price, at ts (int ns since epoch UTC)."""

    ts: int
    bid: float
    ask: float
    last: float


@dataclass(frozen=True, slots=True)
class Transition:
    rule: str  # "ssr" or "luld"
    state: str  # ssr: "active" / "inactive"; luld: "normal" / "limit" / "paused"
    ts: int  # the first snapshot at which the replay saw the new state


@dataclass(frozen=True, slots=True)
class Violation:
    """A decision that left the gate although the order it sends breaks a rule (must never happen)."""

    ts: int
    bar: int
    action: str
    quantity: float
    rules: list[str]


@dataclass
class ReplayReport:
    """What a replay saw: counts, the rules' state transitions, and violations (which must be empty)."""

    instrument: str
    rules_version: str
    bars: int
    warmup_bars: int
    decisions: int
    events: int
    skipped_events: int
    actions: dict[str, int]  # the signal's actions, before the gate
    emitted: dict[str, int]  # what left the gate
    blocked: dict[str, int]  # decisions held back or clipped, counted per reason
    held: int  # decisions turned into HOLD
    clipped: int  # decisions let out with a smaller quantity
    transitions: list[Transition] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for item in out["transitions"] + out["violations"]:
            item["time"] = _iso(item["ts"])
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self, max_rows: int = 50) -> str:
        lines = [
            f"# Compliance replay: {self.instrument}",
            "",
            f"Rules `{self.rules_version}`. {self.bars} bars ({self.warmup_bars} warm-up), {self.decisions} "
            f"decisions, {self.events} quote events ({self.skipped_events} skipped).",
            "",
            f"**Violations: {len(self.violations)}** · held back: {self.held} · clipped: {self.clipped}",
            "",
            "| action | from the signal | emitted |",
            "| --- | ---: | ---: |",
        ]
        for action in sorted(set(self.actions) | set(self.emitted)):
            lines.append(f"| {action} | {self.actions.get(action, 0)} | {self.emitted.get(action, 0)} |")
        lines += ["", "| reason | decisions |", "| --- | ---: |"]
        lines += [f"| {reason} | {self.blocked.get(reason, 0)} |" for reason in REASONS]
        lines += ["", f"## State transitions ({len(self.transitions)})", ""]
        if self.transitions:
            lines += ["| time (ET) | rule | state |", "| --- | --- | --- |"]
            lines += [f"| {_iso(t.ts)} | {t.rule} | {t.state} |" for t in self.transitions[:max_rows]]
            if len(self.transitions) > max_rows:
                lines.append(f"| … {len(self.transitions) - max_rows} more | | |")
        else:
            lines.append("None.")
        lines += ["", f"## Violations ({len(self.violations)})", ""]
        if self.violations:
            lines += ["| time (ET) | bar | action | quantity | rules |", "| --- | ---: | --- | ---: | --- |"]
            lines += [
                f"| {_iso(v.ts)} | {v.bar} | {v.action} | {v.quantity:g} | {', '.join(v.rules)} |"
                for v in self.violations[:max_rows]
            ]
        else:
            lines.append("None: every emitted action passed the independent re-check.")
        return "\n".join(lines) + "\n"


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts / SECOND_NS, tz=MARKET_TZ).isoformat(timespec="seconds")


def load_quote_events(path: str | Path) -> list[QuoteEvent]:
    """Quote events from CSV (header ts,bid,ask,last) or JSON (a list of {ts,bid,ask,last} objects).

    ``ts`` is int ns since epoch UTC or an ISO-8601 time with a UTC offset. Events must be in time order (equal
    times allowed): a tape out of order is a merge or time-zone mistake that sorting would hide. A file without
    events is refused too: --events given means quotes are expected.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: events file not found")
    try:
        text = p.read_text()
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not a text file (byte {e.start} is not UTF-8); expected CSV or JSON quote events") from None
    if not text.strip():
        raise DataError(f"{p}: empty file: no quote events (expected CSV with header ts,bid,ask,last or a JSON list "
                        "of objects)")
    if p.suffix.lower() == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise DataError(f"{p}: expected a JSON list of objects with ts, bid, ask, last")
    else:
        import csv
        import io

        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    events = [_quote_event(row, f"{p}: row {i}") for i, row in enumerate(rows)]
    if not events:
        raise DataError(f"{p}: no quote events (expected CSV with header ts,bid,ask,last or a JSON list of objects)")
    for i in range(1, len(events)):
        if events[i].ts < events[i - 1].ts:
            raise DataError(f"{p}: row {i}: ts {_iso(events[i].ts)} is before row {i - 1}'s {_iso(events[i - 1].ts)}"
                            " (times ET): events must be in time order")
    return events


def _quote_event(row: Mapping[str, Any], where: str) -> QuoteEvent:
    missing = [k for k in ("ts", "bid", "ask", "last") if k not in row]
    if missing:
        raise DataError(f"{where}: missing {', '.join(missing)}")
    ts = _parse_ts(row["ts"], where)
    prices = []
    for name in ("bid", "ask", "last"):
        try:
            value = float(row[name])
        except (TypeError, ValueError):
            raise DataError(f"{where}: {name}: expected a number, got {row[name]!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise DataError(f"{where}: {name}: expected a positive finite price, got {value!r}")
        prices.append(value)
    bid, ask, _ = prices
    if bid > ask:  # the gate refuses a crossed quote (as the server does): name the row now, not mid-run
        raise DataError(f"{where}: bid {bid!r} is above ask {ask!r}: a crossed quote; drop or correct the row")
    if not T_MIN_NS <= ts < T_MAX_NS:
        raise DataError(f"{where}: ts: expected a time from 1900 to 2200, got {ts} ns")
    return QuoteEvent(ts, *prices)


def _parse_ts(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise DataError(f"{where}: ts: expected int ns or ISO-8601 with offset, got {value!r}") from None
    if moment.tzinfo is None:
        raise DataError(f"{where}: ts: {value!r} has no UTC offset (naive times are ambiguous)")
    return int(moment.timestamp()) * SECOND_NS + moment.microsecond * 1000


def _bar_spans(t: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of every bar in ns (see the module docstring)."""
    gaps = np.diff(t)
    median = int(np.median(gaps)) if gaps.size else 0
    if median >= _DAILY_GAP_NS or gaps.size == 0:
        spans = []
        for end in t.tolist():
            session = session_for_day(session_of(end - 1).day)
            spans.append((session.open_ns, session.close_ns))
        return spans
    widths = np.minimum(np.concatenate([[median], gaps]), median)
    return list(zip((t - widths).tolist(), t.tolist()))


def _prints(bars: Bars, i: int, start: int, end: int) -> list[tuple[int, float]]:
    o, h, low, c = float(bars.o[i]), float(bars.h[i]), float(bars.l[i]), float(bars.c[i])
    first, second = (low, h) if c >= o else (h, low)
    third = (end - start) // 3
    return [(start, o), (start + third, first), (start + 2 * third, second), (end - 1, c)]


def replay(
    bars: Bars | Mapping[str, Sequence[float] | np.ndarray],
    signal_fn: SignalFn | None,
    events: Sequence[QuoteEvent] | None = None,
    gate: ComplianceGate | None = None,
    *,
    instrument: str = "REPLAY",
    tier: int = 1,
    prior_close: float | None = None,
    spread_bps: float = 2.0,
    decide: Decide | None = None,
    on_decision: OnDecision | None = None,
) -> ReplayReport:
    """Stream ``bars`` (and quote ``events``) through ``gate``, asking ``signal_fn(i)`` at each bar's close.

    ``decide``: the decisions come from elsewhere (a server, whose gate sees only the market its requests
    carry), so only the closes are fed: no intra-bar prints, no quote events. ``gate`` then only shadows that
    market for the report's state transitions, and the checker holds the decisions to the same market.
    ``on_decision`` sees every decision with the gate's simulated position after it (what `replay --pnl` fills)."""
    if not isinstance(bars, Bars):
        bars = Bars.from_columns(bars)
    if len(bars) == 0:
        raise DataError("bars: empty")
    if tier not in (1, 2):
        raise ConfigurationError(f"tier: expected 1 or 2, got {tier!r}")
    if prior_close is not None and not (math.isfinite(prior_close) and prior_close > 0):
        raise ConfigurationError(f"prior_close: expected a positive finite price, got {prior_close!r}")
    if not (math.isfinite(spread_bps) and spread_bps > 0):
        raise ConfigurationError(f"spread_bps: expected a positive number, got {spread_bps!r}")
    gate = gate if gate is not None else ComplianceGate()
    if (signal_fn is None) == (decide is None):
        raise ConfigurationError("replay: give exactly one of signal_fn (decide here) and decide (served)")
    if decide is not None and events:
        raise ConfigurationError("events: a served replay feeds only the bars' closes (the server sees no quotes)")
    run = _Run(gate, instrument, tier, spread_bps / 2e4, sorted(events or (), key=lambda e: e.ts))
    if prior_close is not None:
        run.closes.set(date.min, prior_close)
    actions: Counter[str] = Counter()
    emitted: Counter[str] = Counter()
    blocked: Counter[str] = Counter()
    warmup = held = clipped = 0

    for i, (start, end) in enumerate(_bar_spans(bars.t)):
        prints = _prints(bars, i, start, end)
        close_ts, close = prints[-1]
        day = session_of(close_ts).day
        known = run.closes.before(day)
        for ts, price in prints if decide is None else ():
            run.feed_events(until=ts)
            if known is not None and ts != close_ts:
                run.feed(run.snapshot(ts, price, known, start))
        run.closes.set(day, close)
        if known is None:
            warmup += 1
            continue
        market = run.snapshot(close_ts, close, known, start)
        if decide is None:
            decision = run.decide(market, *signal_fn(i), i)
        else:
            decision = run.record(market, decide(i, market), i)
        if on_decision is not None:
            on_decision(i, decision, gate.status(instrument, close_ts).position)
        actions[decision.original_action] += 1
        emitted[decision.action] += 1
        blocked.update(decision.reasons)
        held += not decision.allowed
        clipped += decision.allowed and bool(decision.reasons)

    return ReplayReport(
        instrument=instrument,
        rules_version=RULES_VERSION,
        bars=len(bars),
        warmup_bars=warmup,
        decisions=len(bars) - warmup,
        events=len(run.events),
        skipped_events=run.skipped_events + len(run.events) - run.next_event,  # those after the last close too
        actions=dict(actions),
        emitted=dict(emitted),
        blocked=dict(blocked),
        held=held,
        clipped=clipped,
        transitions=run.transitions,
        violations=run.violations,
    )


class _Closes:
    """Closes by ET day, fed in time order: the prior close of a day is the latest close of an earlier day."""

    def __init__(self) -> None:
        self._days: list[date] = []
        self._closes: list[float] = []

    def set(self, day: date, close: float) -> None:
        if self._days and self._days[-1] == day:
            self._closes[-1] = close
        else:
            self._days.append(day)
            self._closes.append(close)

    def before(self, day: date) -> float | None:
        i = bisect_left(self._days, day)
        return self._closes[i - 1] if i else None


class _Run:
    """One replay's moving parts: the gate, the checker, the current quote and what they reported."""

    def __init__(self, gate: ComplianceGate, instrument: str, tier: int, half_spread: float, events: list[QuoteEvent]):
        self.gate, self.instrument, self.tier, self.half_spread = gate, instrument, tier, half_spread
        self.checker = ViolationChecker(gate.config.risk, gate.holidays)
        self.events = events  # sorted by ts
        self.next_event = 0
        self.quote: tuple[int, float, float] | None = None  # (ts, bid, ask) of the latest quote event
        self.closes = _Closes()
        self.skipped_events = 0
        self.transitions: list[Transition] = []
        self.violations: list[Violation] = []
        self._ssr = False
        self._luld = NORMAL

    def snapshot(self, ts: int, price: float, prior_close: float, bar_start: int) -> MarketSnapshot:
        quote = self.quote
        if quote is not None and quote[0] >= bar_start:
            bid, ask = quote[1], quote[2]
        else:
            bid, ask = price * (1 - self.half_spread), price * (1 + self.half_spread)
        return MarketSnapshot(ts, price, bid, ask, prior_close, self.tier)

    def feed_events(self, until: int) -> None:
        """Feed the quote events up to ``until`` (a tie goes to the event: the print at that ts adds nothing)."""
        while self.next_event < len(self.events) and self.events[self.next_event].ts <= until:
            event = self.events[self.next_event]
            self.next_event += 1
            day = session_of(event.ts).day
            known = self.closes.before(day)
            if known is None:
                self.skipped_events += 1
                continue
            self.quote = (event.ts, event.bid, event.ask)
            self.feed(MarketSnapshot(event.ts, event.last, event.bid, event.ask, known, self.tier))

    def feed(self, market: MarketSnapshot) -> None:
        self.gate.observe(self.instrument, market)
        self.checker.record(market)
        self._note_transitions(market.ts)

    def decide(self, market: MarketSnapshot, action: str, quantity: float, bar: int) -> GateDecision:
        """The gate's decision at a bar's close, re-checked by the checker (a violation is recorded)."""
        return self._verify(market, self.gate.check(self.instrument, action, quantity, market), bar)

    def record(self, market: MarketSnapshot, decision: GateDecision, bar: int) -> GateDecision:
        """A decision made elsewhere on ``market``: the shadow gate sees the market, the checker the decision."""
        self.gate.observe(self.instrument, market)
        return self._verify(market, decision, bar)

    def _verify(self, market: MarketSnapshot, decision: GateDecision, bar: int) -> GateDecision:
        self.checker.record(market)
        self._note_transitions(market.ts)
        broken = self.checker.verify(market, decision)
        if broken:
            self.violations.append(Violation(market.ts, bar, decision.action, decision.quantity, broken))
        return decision

    def _note_transitions(self, ts: int) -> None:
        status = self.gate.status(self.instrument, ts)
        if status.ssr_active != self._ssr:
            self._ssr = status.ssr_active
            self.transitions.append(Transition("ssr", "active" if self._ssr else "inactive", ts))
        luld = NORMAL if status.luld_state == LULD_OFF else status.luld_state
        if luld != self._luld:
            self._luld = luld
            self.transitions.append(Transition("luld", luld, ts))
