"""The Limit Up-Limit Down plan: price bands, the reference price, and limit-state / trading-pause transitions.

Penny rounding (the plan text does not settle it, so we choose): bands are rounded *inward*,
the lower band up and the upper band down to the cent. Quotes and trades are in whole cents, so the
inward-rounded band is exactly the set of prices at which trading may happen; a price the gate lets
through is inside the unrounded band too (for sub-dollar stocks quoted in hundredths of a cent the inward
band is slightly stricter than the plan). The plan's worked example comes out the same either way
(48.089 → 48.09, 53.151 → 53.15). A lower band at or below zero (sub-$0.75 stocks in a doubling window)
is reported as 0.0: there is no lower limit then.
"""

from __future__ import annotations

import math
from collections import deque
from datetime import date
from functools import lru_cache
from typing import Literal

import msgspec

from dualhrq.compliance.sessions import session_of, wall_ns
from dualhrq.data.market_rules import LULD
from dualhrq.errors import DataError

_UNITS_PER_DOLLAR = 1_000_000_000  # trade prices are summed as integer nano-dollars
# Relative tolerance for "moves at least 1%": keeps 50.00 → 50.50 a move despite binary rounding.
_MOVE_TOLERANCE = 1e-9
# Cents within this of a whole cent count as that cent (48.09 stored as 48.0899999... is 48.09).
_CENT_TOLERANCE = 1e-6
# Quotes within this of a band are at the band (both are whole cents, stored in binary).
_PRICE_TOLERANCE = 1e-9


@lru_cache(maxsize=64)
def _doubling(day: date) -> tuple[tuple[tuple[int, int], ...], float | None]:
    """The doubling windows of ``day`` in ns and the regime's Tier 2 reference-price ceiling."""
    regime = LULD.regime(day)
    return tuple((wall_ns(day, start), wall_ns(day, end)) for start, end in regime.windows), regime.tier2_max_reference


def bands(reference_price: float, prior_close: float, tier: int, ts: int) -> tuple[float, float]:
    """(lower, upper) price band at ``ts`` (int ns UTC) for a stock with this reference price and prior close.

    The prior close picks the percentage row; the doubling regime of ``ts``'s date decides whether it
    doubles (Tier 2 after 2020-02-24 only at a reference price at or below $3.00). Rounded inward to the cent.
    """
    if not (math.isfinite(reference_price) and reference_price > 0):
        raise DataError(f"reference_price: expected a positive finite price, got {reference_price!r}")
    if not (math.isfinite(prior_close) and prior_close > 0):
        raise DataError(f"prior_close: expected a positive finite price, got {prior_close!r}")
    if tier not in (1, 2):
        raise DataError(f"tier: expected 1 or 2, got {tier!r}")
    windows, tier2_max_reference = _doubling(session_of(ts).day)
    row = LULD.band_percentage(prior_close)
    offset = reference_price * (row.tier1 if tier == 1 else row.tier2)
    if row.cap is not None:
        offset = min(offset, row.cap)
    for start, end in windows:
        if start <= ts < end:
            if tier == 1 or tier2_max_reference is None or reference_price <= tier2_max_reference:
                offset *= 2
            break
    lower = math.ceil((reference_price - offset) * 100 - _CENT_TOLERANCE) / 100
    upper = math.floor((reference_price + offset) * 100 + _CENT_TOLERANCE) / 100
    return max(lower, 0.0), upper


class ReferenceSnapshot(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """What a ReferencePriceTracker needs to resume: the 5-minute window as (ts, nano-dollars) pairs."""

    window: list[tuple[int, int]]
    reference: float | None
    fallback: float | None


class ReferencePriceTracker:
    """The LULD reference price of one instrument through one trading day.

    The first trade of the day (the opening price) is the first reference; until then the prior close
    stands in (the stock opened on a quote). Afterwards the reference becomes the mean of the trades in
    the preceding five minutes whenever that mean is at least 1% away from it; it is re-evaluated on every
    trade (the plan's processor does it periodically), and with no trades it stays. After a trading pause
    the reopening trade is the new reference.
    """

    def __init__(self) -> None:
        self._window: deque[tuple[int, int]] = deque()  # (ts, price in nano-dollars)
        self._sum = 0  # exact integer sum: a float running sum drifts as trades enter and leave
        self._reference: float | None = None
        self._fallback: float | None = None

    @classmethod
    def restore(cls, snapshot: ReferenceSnapshot) -> ReferencePriceTracker:
        tracker = cls()
        tracker._window.extend(snapshot.window)
        tracker._sum = sum(units for _, units in snapshot.window)
        tracker._reference, tracker._fallback = snapshot.reference, snapshot.fallback
        return tracker

    def snapshot(self) -> ReferenceSnapshot:
        return ReferenceSnapshot(window=list(self._window), reference=self._reference, fallback=self._fallback)

    @property
    def reference(self) -> float | None:
        return self._reference if self._reference is not None else self._fallback

    def start_day(self, prior_close: float) -> None:
        self._window.clear()
        self._sum = 0
        self._reference = None
        self._fallback = prior_close

    def reopen(self) -> None:
        """A trading pause ended: the next trade sets the reference; the old one stands in until then."""
        self._window.clear()
        self._sum = 0
        self._fallback = self.reference
        self._reference = None

    def on_trade(self, ts: int, price: float) -> bool:
        """Feed a regular-hours trade; True when the reference price changed."""
        units = round(price * _UNITS_PER_DOLLAR)
        window = self._window
        window.append((ts, units))
        self._sum += units
        horizon = ts - LULD.reference_window_ns
        while window[0][0] <= horizon:
            self._sum -= window.popleft()[1]
        if self._reference is None:
            self._reference = price
            return True
        mean = self._sum / len(window) / _UNITS_PER_DOLLAR
        if abs(mean - self._reference) >= LULD.reference_move * self._reference * (1 - _MOVE_TOLERANCE):
            self._reference = mean
            return True
        return False


NORMAL, LIMIT, PAUSED = "normal", "limit", "paused"
LimitState = Literal["normal", "limit", "paused"]


class LimitSnapshot(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """What a LimitStateMachine needs to resume."""

    state: LimitState
    since: int
    resume: int


class LimitStateMachine:
    """Limit state and trading pause of one instrument, driven by its national best bid and offer.

    A limit state begins when the best offer is at (or through) the lower band or the best bid at (or
    through) the upper band, and ends when a quote leaves both. One still unresolved 15 s after it began
    becomes a 5-minute trading pause starting at that moment (a quote arriving exactly at 15 s is too
    late). Pause extensions (a reopening auction that cannot clear) are not modelled: the pause ends after
    5 minutes and the state returns to normal.
    """

    def __init__(self) -> None:
        self._state = NORMAL
        self._since = 0  # LIMIT: when the limit state began
        self._resume = 0  # PAUSED: when trading resumes

    @classmethod
    def restore(cls, snapshot: LimitSnapshot) -> LimitStateMachine:
        machine = cls()
        machine._state, machine._since, machine._resume = snapshot.state, snapshot.since, snapshot.resume
        return machine

    def snapshot(self) -> LimitSnapshot:
        return LimitSnapshot(state=self._state, since=self._since, resume=self._resume)

    def reset(self) -> None:
        self._state = NORMAL

    def state_at(self, ts: int) -> str:
        """The state at ``ts`` if no quote arrives before it: a limit state times out, a pause ends."""
        if self._state == LIMIT and ts >= self._since + LULD.limit_state_ns:
            return PAUSED if ts < self._since + LULD.limit_state_ns + LULD.pause_ns else NORMAL
        if self._state == PAUSED and ts >= self._resume:
            return NORMAL
        return self._state

    def advance(self, ts: int) -> str:
        """Move the state on to ``ts`` (see ``state_at``) and return it."""
        state = self.state_at(ts)
        if self._state == LIMIT and state != LIMIT:
            self._resume = self._since + LULD.limit_state_ns + LULD.pause_ns
        self._state = state
        return state

    def on_quote(self, ts: int, bid: float, ask: float, lower: float, upper: float) -> str:
        """Feed a national best bid and offer against the current bands; returns the new state."""
        state = self.advance(ts)
        if state == PAUSED:
            return state
        at_limit = ask <= lower + _PRICE_TOLERANCE or bid >= upper - _PRICE_TOLERANCE
        if at_limit and state == NORMAL:
            self._state, self._since = LIMIT, ts
        elif not at_limit and state == LIMIT:
            self._state = NORMAL
        return self._state
