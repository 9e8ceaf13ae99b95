"""SEC Rule 201 (the alternative uptick rule) for one instrument, as a small forward-only state machine.

A regular-hours trade at or below 90% of the prior close triggers the restriction for the rest of that day
and all of the next trading day; a trigger on a restricted day pushes the end out to the trading day after
it. While restricted, a short sale must be priced above the national best bid (NBB).

Time moves forward: trades and closes are fed in time order and ``is_active`` answers for the present (a
query about a time before the latest trigger does not recover an earlier, expired restriction).
"""

from __future__ import annotations

import math
from datetime import date

import msgspec

from dualhrq.compliance.sessions import Holidays, is_trading_day, next_trading_day, session_for_day, session_of
from dualhrq.data.market_rules import NYSE_HOLIDAYS, SSR
from dualhrq.errors import DataError

# Relative tolerance on the trigger price: absorbs binary rounding of decimal prices (18.00 vs 0.9 × 20.00)
# while staying far below any tick, so "exactly -10.00%" triggers and one cent above does not.
TRIGGER_TOLERANCE = 1e-9


class SSRSnapshot(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """What an SSRState needs to resume where it stopped (the cached trigger price is derived again)."""

    closes: list[tuple[date, float]]
    active_from: int
    active_until: int
    # False in journals written before SSRState knew exchange holidays (they knew only weekends): their
    # restrictions may end on a holiday, where this calendar's trigger would not have put the end.
    holiday_calendar: bool = False


class SSRState:
    """Short-sale-restriction state of one instrument."""

    def __init__(self, holidays: Holidays = NYSE_HOLIDAYS) -> None:
        self._holidays = holidays
        self._closes: list[tuple[date, float]] = []  # the two latest official closes, oldest first
        self._trigger_day: date | None = None  # day that _trigger_price belongs to
        self._trigger_price: float | None = None
        self._active_from = 0  # the restriction covers [_active_from, _active_until), ns
        self._active_until = 0

    @classmethod
    def restore(cls, snapshot: SSRSnapshot, holidays: Holidays = NYSE_HOLIDAYS) -> SSRState:
        """The state a snapshot holds. In a snapshot from before the holiday calendar, a restriction written
        to end on a day that is no trading day under ``holidays`` is carried to the end of the next trading
        day, where this calendar's trigger would have put it: never shortened. A snapshot written since is
        taken as it is (a restriction the feed held on a weekend ends that day)."""
        state = cls(holidays)
        state._closes = sorted(snapshot.closes)[-2:]
        state._active_from, state._active_until = snapshot.active_from, snapshot.active_until
        if not snapshot.holiday_calendar and state._active_until > state._active_from:
            last = session_of(state._active_until - 1).day
            if not is_trading_day(last, holidays):
                state._active_until = session_for_day(next_trading_day(last, holidays)).end_ns
        return state

    def snapshot(self) -> SSRSnapshot:
        return SSRSnapshot(closes=list(self._closes), active_from=self._active_from, active_until=self._active_until,
                           holiday_calendar=True)

    def on_close(self, day: date, close: float) -> None:
        """Record the official close of ``day``; it is the prior close of the next trading day."""
        if not (math.isfinite(close) and close > 0):
            raise DataError(f"close: expected a positive finite price, got {close!r}")
        closes = [c for c in self._closes if c[0] != day] + [(day, close)]
        self._closes = sorted(closes)[-2:]
        self._trigger_day = None  # the cached trigger price may depend on this close

    def prior_close(self, day: date) -> float | None:
        """The latest recorded close of a day before ``day`` (None if there is none)."""
        for close_day, close in reversed(self._closes):
            if close_day < day:
                return close
        return None

    def on_trade(self, ts: int, price: float) -> bool:
        """Feed a trade; True when it triggered the restriction or extended it."""
        session = session_of(ts)
        if not session.in_regular_hours(ts) or session.day < SSR.effective:
            return False
        threshold = self._threshold(session.day)
        if threshold is None or not price <= threshold:  # written so that NaN never triggers
            return False
        until = session_for_day(next_trading_day(session.day, self._holidays)).end_ns
        if self.is_active(ts):
            if until <= self._active_until:
                return False
            self._active_until = until
            return True
        self._active_from, self._active_until = ts, until
        return True

    def hold(self, ts: int) -> None:
        """The feed says the restriction is in force at ``ts``. A restriction ends only at the end of a day, so
        it holds at least to the end of ``ts``'s day, whatever the trades seen so far implied."""
        end = session_of(ts).end_ns
        if ts >= self._active_until:  # no restriction now or later: a new one
            self._active_from, self._active_until = ts, end
        else:  # one in force, or (for a snapshot older than the latest) one starting later: widen it
            self._active_from = min(self._active_from, ts)
            self._active_until = max(self._active_until, end)

    def is_active(self, ts: int) -> bool:
        return self._active_from <= ts < self._active_until

    def allows_short(self, ts: int, price: float, bid: float) -> bool:
        """Whether a short sale priced at ``price`` may go out at ``ts`` with national best bid ``bid``."""
        return not self.is_active(ts) or price > bid

    def _threshold(self, day: date) -> float | None:
        if self._trigger_day != day:
            prior = self.prior_close(day)
            self._trigger_price = None if prior is None else prior * SSR.trigger_ratio * (1 + TRIGGER_TOLERANCE)
            self._trigger_day = day
        return self._trigger_price
