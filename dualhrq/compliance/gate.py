"""The compliance gate: the last step before a signal leaves the runtime.

Per instrument it keeps the SSR state, the LULD reference price and limit state (all fed from the market
snapshots it is shown) and a position. Each model action is mapped to the order it implies given that
position, the order is checked against SSR, the LULD band and pause, and the risk limits, and a violating
action is replaced by HOLD with the reasons kept. Quantities above a risk limit are clipped instead, and a
sale through zero while SSR is active is clipped to its long part (reason ``ssr``): only the short part is
restricted.

Assumptions the decisions rest on (the replay's checker shares them):
- Orders are marketable: a buy is priced at the best offer, a sell at the best bid. A short sale at the
  bid is never "above the NBB", so while SSR is active every short sale is held back.
- A snapshot's ``last`` is a trade at ``ts``. State is fed only by snapshots newer than the latest one seen
  for that instrument; an older or repeated snapshot is checked against the current state.
- CLOSE_LONG / CLOSE_SHORT close the whole position (the model's quantity is ignored); with nothing to
  close they keep their action with quantity 0.
- The position is the gate's own simulation (every allowed order fills in full) unless the caller passes
  ``position`` (the wire's ``market.position``), which then replaces it before the decision.
- ``market.ssr_active`` true (the feed's restriction indicator) holds SSR whatever the trades seen implied,
  to the end of that day at least: a restriction only ever ends with a day.
- ``max_notional`` caps the position's value (|position| × order price), like ``max_position`` caps its
  size; ``max_order_quantity`` caps every order, closes included.

Durability: with a StateJournal (``compliance.state_path``) every decision reads the instrument's row and
writes the changed state back in one transaction committed before the decision is returned, so a gate that
starts, or takes an instrument over from a dead worker, resumes exactly where the last decision left it. A
cached book is reused only while the row's version is the one this gate wrote; otherwise it is read again.
The kill switch is written through too: a gate started on the file holds it as it was last set. Without a
journal the state lives in memory only, and a restart starts with the kill switch off.

Single-threaded: call it from one thread (one asyncio loop); it takes no locks. A check costs microseconds
in memory (plain arithmetic on the instrument's state, the ET session of a timestamp computed once per day),
plus one short SQLite transaction with a journal.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date

from dualhrq.compliance.journal import FORMAT_VERSION, BookState, StateJournal
from dualhrq.compliance.luld import LIMIT, NORMAL, PAUSED, LimitStateMachine, ReferencePriceTracker, bands
from dualhrq.compliance.sessions import Holidays, previous_trading_day, session_of
from dualhrq.compliance.ssr import SSRState
from dualhrq.config import ComplianceConfig, RiskConfig
from dualhrq.data.bars import T_MAX_NS, T_MIN_NS
from dualhrq.data.market_rules import LULD, NYSE_HOLIDAYS
from dualhrq.errors import DataError
from dualhrq.model.vocab import ACTIONS

REASONS = ("ssr", "luld_band", "luld_pause", "risk_limit", "kill_switch")
LULD_OFF = "off"  # LULD state outside regular hours or before the plan existed

_FLAT = 1e-12  # positions this close to zero are zero (repeated float buys and sells leave dust)
POSITION_LIMIT = 2.0**53  # units: beyond, a float no longer counts single units


class MarketError(DataError):
    """A bad market field: ``field`` names it (``market.bid``), ``reason`` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


def check_position(position: float | None, field: str = "position") -> None:
    """A caller's position: None (the gate simulates it), or a finite number of units within POSITION_LIMIT."""
    if position is not None and not (math.isfinite(position) and abs(position) <= POSITION_LIMIT):
        raise MarketError(field, f"expected a finite number of units within +-2^53, got {position!r}")


@dataclass(frozen=True, slots=True)
class MarketSnapshot:
    """The market at decision time: the wire's ``market`` (ts is int ns since epoch UTC) without ``position``,
    which is the caller's, not the market's (``ComplianceGate.check(position=...)``)."""

    ts: int
    last: float
    bid: float
    ask: float
    prior_close: float
    luld_tier: int
    ssr_active: bool = False  # the feed's short-sale-restriction indicator

    def __post_init__(self) -> None:
        if not isinstance(self.ts, int) or isinstance(self.ts, bool):
            raise MarketError("market.ts", f"expected int nanoseconds since epoch, got {self.ts!r}")
        if not T_MIN_NS <= self.ts < T_MAX_NS:
            raise MarketError("market.ts", f"expected a time from 1900 to 2200 in ns since the epoch, got {self.ts}")
        for name in ("last", "bid", "ask", "prior_close"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise MarketError(f"market.{name}", f"expected a positive finite price, got {value!r}")
        if self.bid > self.ask:  # SSR's test of a short sale against the bid means nothing on a crossed quote
            raise MarketError("market.bid", f"{self.bid!r} is above the ask {self.ask!r}: a crossed quote")
        if self.luld_tier not in (1, 2):
            raise MarketError("market.luld_tier", f"expected 1 or 2, got {self.luld_tier!r}")
        if not isinstance(self.ssr_active, bool):
            raise MarketError("market.ssr_active", f"expected a boolean, got {self.ssr_active!r}")


@dataclass(frozen=True, slots=True)
class GateDecision:
    """What leaves the gate. ``allowed`` is False when the action was held back (then action is HOLD);
    an allowed decision may still carry ``risk_limit`` or ``ssr`` when its quantity was clipped."""

    action: str
    quantity: float
    allowed: bool
    original_action: str
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class InstrumentStatus:
    """One instrument's compliance state at a time (for reports and the runtime's stats)."""

    position: float
    ssr_active: bool
    luld_state: str  # "off", "normal", "limit" or "paused"
    lower: float | None
    upper: float | None
    reference: float | None


class _Book:
    """Everything the gate remembers about one instrument."""

    __slots__ = ("ssr", "reference", "limit", "position", "day", "prior_close", "last_ts", "luld_state", "band",
                 "version")

    def __init__(self, holidays: Holidays) -> None:
        self.ssr = SSRState(holidays)
        self.reference = ReferencePriceTracker()
        self.limit = LimitStateMachine()
        self.position = 0.0
        self.day: date | None = None
        self.prior_close = 0.0
        self.last_ts = -1
        self.luld_state = LULD_OFF
        self.band: tuple[float, float] | None = None
        self.version = 0  # of the journal row this book was read from or last written as; 0: none yet

    @classmethod
    def restore(cls, state: BookState, version: int, holidays: Holidays) -> _Book:
        book = cls(holidays)
        book.ssr = SSRState.restore(state.ssr, holidays)
        book.reference = ReferencePriceTracker.restore(state.reference)
        book.limit = LimitStateMachine.restore(state.limit)
        book.position, book.day, book.prior_close = state.position, state.day, state.prior_close
        book.last_ts, book.luld_state, book.band = state.last_ts, state.luld_state, state.band
        book.version = version
        return book

    def state(self) -> BookState:
        return BookState(format_version=FORMAT_VERSION, position=self.position, day=self.day,
                         prior_close=self.prior_close, last_ts=self.last_ts, luld_state=self.luld_state,
                         band=self.band, ssr=self.ssr.snapshot(), reference=self.reference.snapshot(),
                         limit=self.limit.snapshot())


def implied_order(action: str, quantity: float, position: float) -> tuple[int, float]:
    """(side, quantity) of the order an action implies: side +1 buys, -1 sells, 0 sends nothing."""
    if action == "BUY":
        return 1, quantity
    if action == "SELL":
        return -1, quantity
    if action == "CLOSE_LONG" and position > 0:
        return -1, position
    if action == "CLOSE_SHORT" and position < 0:
        return 1, -position
    return 0, 0.0


def risk_capacity(side: int, quantity: float, position: float, price: float, risk: RiskConfig) -> float:
    """The largest part of an order the risk limits allow: order size, then position size and value."""
    quantity = min(quantity, risk.max_order_quantity)
    cap = min(risk.max_position, risk.max_notional / price)
    if side > 0 and position + quantity > cap:
        quantity = max(0.0, cap - position)
    elif side < 0 and position - quantity < -cap:
        quantity = max(0.0, position + cap)
    return quantity


class ComplianceGate:
    """SSR, LULD and risk checks on model actions, with per-instrument state (see the module docstring)."""

    def __init__(self, config: ComplianceConfig | None = None, *, holidays: Holidays = NYSE_HOLIDAYS,
                 journal: StateJournal | None = None) -> None:
        """``journal``: the store to write through to; by default the one ``config.state_path`` names, and
        none (state in memory only) when that is unset."""
        self.config = config if config is not None else ComplianceConfig()
        self.holidays = holidays
        if journal is None and self.config.state_path is not None:
            journal = StateJournal(self.config.state_path, self.config.state_sync)
        self._journal = journal
        self._books: dict[str, _Book] = {}
        self._kill_switch = journal.kill_switch() if journal is not None else False

    def close(self) -> None:
        """Close the journal (every decision is already committed: this only releases the file)."""
        if self._journal is not None:
            self._journal.close()

    @property
    def kill_switch(self) -> bool:
        return self._kill_switch

    def set_kill_switch(self, on: bool) -> None:
        """While on, every action becomes HOLD with reason ``kill_switch`` (whatever ``enabled`` says). Written
        through to the journal, so that a restart keeps it. When the write fails (raised), an "on" holds here
        all the same and an "off" does not: either way the gate errs on the side of holding."""
        on = bool(on)
        if on:
            self._kill_switch = True
        if self._journal is not None:
            self._journal.set_kill_switch(on)
        self._kill_switch = on

    def stored_kill_switch(self) -> bool | None:
        """The kill switch as the journal holds it now (another process may have set it since this gate started);
        None without a journal."""
        return None if self._journal is None else self._journal.kill_switch()

    def observe(self, instrument: str, market: MarketSnapshot) -> None:
        """Feed a market snapshot (a trade and a quote) without deciding anything."""
        with self._held(instrument) as book:
            self._feed(book, market)

    def check(
        self,
        instrument: str,
        action: str,
        quantity: float,
        market: MarketSnapshot,
        position: float | None = None,
    ) -> GateDecision:
        """Decide what may leave for ``action``/``quantity`` given ``market``; updates the position if allowed."""
        if action not in ACTIONS:
            raise DataError(f"action: expected one of {', '.join(ACTIONS)}, got {action!r}")
        try:
            quantity = float(quantity)  # numpy scalars from the engine become plain floats for the reply
        except (TypeError, ValueError):
            raise DataError(f"quantity: expected a number, got {quantity!r}") from None
        if not (math.isfinite(quantity) and quantity >= 0):
            raise DataError(f"quantity: expected a finite number >= 0, got {quantity!r}")
        check_position(position)
        if self._kill_switch:
            return GateDecision("HOLD", 0.0, False, action, ["kill_switch"])
        if not self.config.enabled:
            return GateDecision(action, quantity, True, action, [])
        with self._held(instrument) as book:
            self._feed(book, market)
            return self._decide(book, action, quantity, market, position)

    def _decide(self, book: _Book, action: str, quantity: float, market: MarketSnapshot,
                position: float | None) -> GateDecision:
        current = book.position if position is None else position
        side, qty = implied_order(action, quantity, current)
        if side == 0 or qty == 0:
            book.position = current
            return GateDecision(action, 0.0, True, action, [])

        price = market.ask if side > 0 else market.bid
        reasons: list[str] = []
        held = False
        if side < 0:
            short_qty = qty - max(current, 0.0)
            if short_qty > 0 and not book.ssr.allows_short(market.ts, price, market.bid):
                reasons.append("ssr")
                # The long part of a sale is not restricted. Taken as the position itself, not qty - short_qty:
                # that difference can round a hair above the position and sell short by 1e-16.
                qty = max(current, 0.0)
                held = qty <= 0
        if book.luld_state != LULD_OFF and book.band is not None:
            lower, upper = book.band
            if book.luld_state == PAUSED:
                reasons.append("luld_pause")
                held = True
            elif not lower <= price <= upper:
                reasons.append("luld_band")
                held = True
        allowed_qty = risk_capacity(side, qty, current, price, self.config.risk)
        if allowed_qty < qty:
            reasons.append("risk_limit")
            qty = allowed_qty
            held = held or qty <= 0
        if held:
            book.position = current
            return GateDecision("HOLD", 0.0, False, action, reasons)
        after = current + side * qty
        book.position = 0.0 if abs(after) < _FLAT else after
        return GateDecision(action, qty, True, action, reasons)

    def position(self, instrument: str) -> float:
        book = self._current(instrument)
        return book.position if book is not None else 0.0

    def status(self, instrument: str, ts: int) -> InstrumentStatus:
        """The instrument's state at ``ts`` as last fed (a limit state times out and a pause ends by ``ts``)."""
        book = self._current(instrument)
        if book is None:
            return InstrumentStatus(0.0, False, LULD_OFF, None, None, None)
        luld_state = book.luld_state
        if luld_state != LULD_OFF:
            luld_state = book.limit.state_at(ts) if session_of(ts).in_regular_hours(ts) else LULD_OFF
        lower, upper = book.band if book.band is not None else (None, None)
        return InstrumentStatus(
            book.position, book.ssr.is_active(ts), luld_state, lower, upper, book.reference.reference
        )

    def _current(self, instrument: str) -> _Book | None:
        """The instrument's book as the journal has it now (the cached one while it is current), or None."""
        book = self._books.get(instrument)
        if self._journal is None:
            return book
        known = book.version if book is not None else 0
        version, state = self._journal.read(instrument, known)
        if state is not None:
            book = self._books[instrument] = _Book.restore(state, version, self.holidays)
        elif version != known:  # the row is gone although this gate wrote it: refuse to start from nothing
            raise DataError(f"{self._journal.path}: instrument {instrument!r}: its state row (version {known}) "
                            "disappeared from the store")
        return book

    @contextmanager
    def _held(self, instrument: str) -> Iterator[_Book]:
        """The instrument's book for one change; with a journal, read and written back in one transaction,
        committed before the block's result reaches the caller."""
        if self._journal is None:
            book = self._books.get(instrument)
            if book is None:
                book = self._books[instrument] = _Book(self.holidays)
            yield book
            return
        try:
            with self._journal.exclusive():
                book = self._current(instrument)
                if book is None:
                    book = self._books[instrument] = _Book(self.holidays)
                yield book
                book.version += 1
                self._journal.write(instrument, book.version, book.state())
        except BaseException:
            # The transaction rolled back: the book in memory may hold changes the store does not, so the next
            # decision reads the store again rather than trust it.
            self._books.pop(instrument, None)
            raise

    def _feed(self, book: _Book, market: MarketSnapshot) -> None:
        if market.ssr_active:
            book.ssr.hold(market.ts)
        ts = market.ts
        if ts <= book.last_ts:
            return
        book.last_ts = ts
        session = session_of(ts)
        if session.day != book.day:
            book.day = session.day
            book.prior_close = market.prior_close
            book.ssr.on_close(previous_trading_day(session.day, self.holidays), market.prior_close)
            book.reference.start_day(market.prior_close)
            book.limit.reset()
        elif market.prior_close != book.prior_close:  # a corrected close: SSR must use it at once
            book.prior_close = market.prior_close
            book.ssr.on_close(previous_trading_day(session.day, self.holidays), market.prior_close)

        book.ssr.on_trade(ts, market.last)  # it skips trades outside regular hours itself
        if not session.in_regular_hours(ts) or session.day < LULD.effective:
            book.luld_state, book.band = LULD_OFF, None
            return
        before = book.luld_state
        state = book.limit.advance(ts)
        if state != PAUSED:  # no trades print during a pause: the reference price stands still
            if state == NORMAL and before in (LIMIT, PAUSED):  # advance() only leaves LIMIT through a pause
                book.reference.reopen()
            book.reference.on_trade(ts, market.last)
        reference = book.reference.reference
        assert reference is not None  # start_day() set the prior close as the fallback
        book.band = bands(reference, book.prior_close, market.luld_tier, ts)
        book.luld_state = book.limit.on_quote(ts, market.bid, market.ask, *book.band)
