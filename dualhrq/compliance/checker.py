"""An independent violation checker: the replay's second opinion on every decision the gate let out.

It is deliberately a second, plainer implementation of the rules rather than a reuse of the gate's state
machines: it keeps the raw history (the SSR trigger days, the last five minutes of trades) and re-derives
each rule's state from it, tracks its own position from the decisions actually emitted, and only then asks
whether the order a decision sends breaks a rule. A bug in the gate's bookkeeping (a stale reference
price, a restriction not carried into the next day, a position drift) shows up here as a violation instead
of being trusted. It shares with the gate only the rule tables, the calendar, the band arithmetic (tested on
its own against the rule text) and the documented assumptions (marketable orders; a snapshot's ``last`` is a
trade; snapshots not newer than the previous one add no history).
"""

from __future__ import annotations

import math
from datetime import date, timedelta

from dualhrq.compliance.gate import GateDecision, MarketSnapshot
from dualhrq.compliance.luld import bands
from dualhrq.compliance.sessions import Holidays, previous_trading_day, session_of
from dualhrq.compliance.ssr import TRIGGER_TOLERANCE
from dualhrq.config import RiskConfig
from dualhrq.data.market_rules import LULD, NYSE_HOLIDAYS, SSR

_SLACK = 1e-9  # relative slack on limits and bands: float arithmetic, not tolerance for breaches
_AT_BAND = 1e-9  # a quote this close to a band is at it (as in luld.py: both are whole cents in binary)


class ViolationChecker:
    """Feed it every snapshot the gate saw (``record``) and every decision it made (``verify``), in order."""

    def __init__(self, risk: RiskConfig, holidays: Holidays = NYSE_HOLIDAYS) -> None:
        self._risk = risk
        self._holidays = holidays
        self._first_trigger: dict[date, int] = {}  # SSR: trading day -> first triggering trade
        self._last_ts = -1
        self._day: date | None = None
        self._recent: list[tuple[int, float]] = []  # LULD: this day's trades of the last five minutes
        self._reference: float | None = None
        self._stand_in: float | None = None  # reference before the day's (or a reopening's) first trade
        self._limit_since: int | None = None
        self._paused_until: int | None = None
        self._band: tuple[float, float] | None = None
        self.position = 0.0

    def record(self, market: MarketSnapshot) -> None:
        """Add a snapshot to the history."""
        ts = market.ts
        if ts <= self._last_ts:
            return
        self._last_ts = ts
        session = session_of(ts)
        if session.day != self._day:
            self._day = session.day
            self._recent, self._reference, self._stand_in = [], None, market.prior_close
            self._limit_since = self._paused_until = None
        regular = session.in_regular_hours(ts)
        if (
            regular
            and session.day >= SSR.effective
            and market.last <= market.prior_close * SSR.trigger_ratio * (1 + TRIGGER_TOLERANCE)
        ):
            self._first_trigger.setdefault(session.day, ts)
        if not regular or session.day < LULD.effective:
            self._band = None
            return
        self._record_luld(market)

    def ssr_active(self, ts: int) -> bool:
        """Rule 201 from the trigger days alone: a trigger earlier today, or on a day D < today whose next
        trading day is not before today (the previous trading day and any non-trading days after it)."""
        day = session_of(ts).day
        today = self._first_trigger.get(day)
        if today is not None and today <= ts:
            return True
        earlier = previous_trading_day(day, self._holidays)
        while earlier < day:
            if earlier in self._first_trigger:
                return True
            earlier += timedelta(days=1)
        return False

    def verify(self, market: MarketSnapshot, decision: GateDecision) -> list[str]:
        """The rules that the order sent for ``decision`` breaks (empty when it is clean)."""
        quantity = decision.quantity
        if decision.action == "HOLD" or quantity == 0:
            return []
        buying = decision.action in ("BUY", "CLOSE_SHORT")
        price = market.ask if buying else market.bid
        before = self.position
        after = before + quantity if buying else before - quantity
        broken = []
        if not buying and after < 0 and max(before, 0.0) < quantity:
            if decision.action == "CLOSE_LONG":
                broken.append("close_exceeds_position")  # a short sale marked as a long sale
            elif self.ssr_active(market.ts) and not price > market.bid:
                broken.append("ssr")
        if decision.action == "CLOSE_SHORT" and after > 0:
            broken.append("close_exceeds_position")
        if self._band is not None:
            lower, upper = self._band
            if self._paused_until is not None:
                broken.append("luld_pause")
            elif price < lower * (1 - _SLACK) or price > upper * (1 + _SLACK):
                broken.append("luld_band")
        if self._breaks_risk(quantity, before, after, price):
            broken.append("risk_limit")
        self.position = 0.0 if abs(after) < 1e-12 else after
        return broken

    def _breaks_risk(self, quantity: float, before: float, after: float, price: float) -> bool:
        risk = self._risk
        if quantity > risk.max_order_quantity * (1 + _SLACK):
            return True
        if abs(after) <= abs(before):
            return False  # reducing exposure never breaks a position limit
        return abs(after) > risk.max_position * (1 + _SLACK) or abs(after) * price > risk.max_notional * (1 + _SLACK)

    def _record_luld(self, market: MarketSnapshot) -> None:
        ts = market.ts
        if self._limit_since is not None and ts - self._limit_since >= LULD.limit_state_ns:
            self._paused_until = self._limit_since + LULD.limit_state_ns + LULD.pause_ns
            self._limit_since = None
        if self._paused_until is not None and ts >= self._paused_until:
            self._paused_until = None  # reopened: the reopening trade is the next reference
            self._recent, self._stand_in, self._reference = [], self._reference or self._stand_in, None
        if self._paused_until is None:
            self._recent = [(t, p) for t, p in self._recent if t > ts - LULD.reference_window_ns]
            self._recent.append((ts, market.last))
            if self._reference is None:
                self._reference = market.last
            else:
                mean = math.fsum(p for _, p in self._recent) / len(self._recent)
                if abs(mean / self._reference - 1) >= LULD.reference_move * (1 - 1e-9):
                    self._reference = mean
        reference = self._reference if self._reference is not None else self._stand_in
        assert reference is not None
        self._band = lower, upper = bands(reference, market.prior_close, market.luld_tier, ts)
        if self._paused_until is None:
            at_band = market.ask <= lower + _AT_BAND or market.bid >= upper - _AT_BAND
            if not at_band:
                self._limit_since = None
            elif self._limit_since is None:
                self._limit_since = ts
