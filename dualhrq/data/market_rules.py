"""The US-equities rule tables the compliance gate enforces: frozen data, one version, dated regimes.

Written from SEC Rule 201 and the LULD plan with its Amendment 18. Every threshold lives
here exactly once; the rule engines (ssr.py, luld.py) and the replay's independent checker read it, so a
change of rules is a change of this file and of ``RULES_VERSION``, which the runtime reports in ``ping``.

Simplifications, on purpose:
- Rule 201 is enforced from its compliance date and LULD from the plan's first day (one date for every
  stock, not the plan's phase-in by tier); before those dates the rule is simply not in force.
- Trading days are the NYSE's: weekdays but its full-day holidays (``NYSE_HOLIDAYS``: the exchange's rules for
  observing each, and its unscheduled closures since Rule 201). Early closes (13:00) are not modelled: regular
  hours end at 16:00 on those days too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from dualhrq.data.resample import SECOND_NS
from dualhrq.errors import DataError

# Named after the newest regime in the tables (Amendment 18), and the calendar the trading days come from.
RULES_VERSION = "us-equities-2020.02.24+nyse-holidays"

MARKET_TZ = ZoneInfo("America/New_York")
REGULAR_OPEN = time(9, 30)
REGULAR_CLOSE = time(16, 0)


@dataclass(frozen=True)
class SSRRule:
    """SEC Rule 201: a trade at or below ``trigger_ratio`` × prior close, in regular hours, restricts short
    sales (priced at or below the national best bid) for the rest of that day and the next trading day."""

    effective: date
    trigger_ratio: float


@dataclass(frozen=True)
class BandPercentage:
    """One row of the LULD percentage table; ``cap`` (dollars) makes the band the lesser of cap and
    percentage × reference price, as the sub-$0.75 row says."""

    tier1: float
    tier2: float
    cap: float | None = None


@dataclass(frozen=True)
class DoublingRegime:
    """When the band percentage doubles. Windows are half-open [start, end) ET wall-clock times.

    ``tier2_max_reference``: Tier 2 stocks double only when the reference price is at or below it (None:
    every stock doubles). Sources differ on which price this $3.00 test reads; we follow the reference
    price, as the plan's text reads.
    """

    effective: date
    windows: tuple[tuple[time, time], ...]
    tier2_max_reference: float | None


@dataclass(frozen=True)
class LULDRules:
    """The Limit Up-Limit Down plan: reference price, bands, limit state and trading pause."""

    effective: date
    reference_window_ns: int  # reference = mean of the trades in the preceding window
    reference_move: float  # ... replacing the reference only when it moves at least this fraction
    high_price: float  # prior close above this: the "> $3.00" row
    low_price: float  # prior close below this: the "< $0.75" row; in between (inclusive): the middle row
    above_high: BandPercentage
    middle: BandPercentage
    below_low: BandPercentage
    limit_state_ns: int  # a limit state not resolved within this becomes a trading pause
    pause_ns: int  # length of a trading pause
    regimes: tuple[DoublingRegime, ...]  # oldest first

    def band_percentage(self, prior_close: float) -> BandPercentage:
        """The table row that the prior close selects."""
        if prior_close > self.high_price:
            return self.above_high
        if prior_close >= self.low_price:
            return self.middle
        return self.below_low

    def regime(self, day: date) -> DoublingRegime:
        """The doubling regime in force on ``day``; raises DataError before the plan existed."""
        if day < self.effective:
            raise DataError(f"ts: {day} is before the LULD plan took effect ({self.effective})")
        current = self.regimes[0]
        for regime in self.regimes[1:]:
            if day >= regime.effective:
                current = regime
        return current


SSR = SSRRule(effective=date(2011, 2, 28), trigger_ratio=0.90)

LULD = LULDRules(
    effective=date(2013, 4, 8),
    reference_window_ns=5 * 60 * SECOND_NS,
    reference_move=0.01,
    high_price=3.00,
    low_price=0.75,
    above_high=BandPercentage(tier1=0.05, tier2=0.10),
    middle=BandPercentage(tier1=0.20, tier2=0.20),
    below_low=BandPercentage(tier1=0.75, tier2=0.75, cap=0.15),
    limit_state_ns=15 * SECOND_NS,
    pause_ns=5 * 60 * SECOND_NS,
    regimes=(
        DoublingRegime(
            effective=date(2013, 4, 8),
            windows=((time(9, 30), time(9, 45)), (time(15, 35), time(16, 0))),
            tier2_max_reference=None,
        ),
        DoublingRegime(  # Amendment 18
            effective=date(2020, 2, 24),
            windows=((time(15, 35), time(16, 0)),),
            tier2_max_reference=3.00,
        ),
    ),
)


# ---------------------------------------------------------------- trading days

# Days the NYSE closed outside its holiday rules, from Rule 201's first day on.
UNSCHEDULED_CLOSURES = frozenset({
    date(2012, 10, 29), date(2012, 10, 30),  # Hurricane Sandy
    date(2018, 12, 5),  # national day of mourning, President G. H. W. Bush
    date(2025, 1, 9),  # national day of mourning, President Carter
})


def _easter(year: int) -> date:
    """Easter Sunday in the Gregorian calendar (the anonymous Gregorian algorithm)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = divmod(b, 4)
    g = (8 * b + 13) // 25
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    lw = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 19 * lw) // 433
    month, day = divmod(h + lw - 7 * m + 90, 25)
    return date(year, month, (h + lw - 7 * m + 33 * month + 19) % 32)


def _nth_weekday(year: int, month: int, weekday: int, n: int) -> date:
    """The n-th (1-based; -1: the last) ``weekday`` (Monday 0) of a month."""
    if n > 0:
        first = date(year, month, 1)
        return first + timedelta(days=(weekday - first.weekday()) % 7 + 7 * (n - 1))
    last = date(year + month // 12, month % 12 + 1, 1) - timedelta(days=1)
    return last - timedelta(days=(last.weekday() - weekday) % 7)


def _observed(day: date, saturday_to_friday: bool = True) -> date | None:
    """A fixed-date holiday as the NYSE observes it: Sunday's on the Monday after, Saturday's on the Friday
    before (None for New Year's Day: the Friday before closes a year, so the exchange stays open)."""
    if day.weekday() == 6:
        return day + timedelta(days=1)
    if day.weekday() == 5:
        return day - timedelta(days=1) if saturday_to_friday else None
    return day


@lru_cache(maxsize=None)
def nyse_holidays(year: int) -> frozenset[date]:
    """The weekdays of ``year`` on which the NYSE is closed all day."""
    days = [
        _observed(date(year, 1, 1), saturday_to_friday=False),
        _nth_weekday(year, 1, 0, 3) if year >= 1998 else None,  # Martin Luther King Jr. Day
        _nth_weekday(year, 2, 0, 3),  # Washington's Birthday
        _easter(year) - timedelta(days=2),  # Good Friday
        _nth_weekday(year, 5, 0, -1),  # Memorial Day
        _observed(date(year, 6, 19)) if year >= 2022 else None,  # Juneteenth
        _observed(date(year, 7, 4)),  # Independence Day
        _nth_weekday(year, 9, 0, 1),  # Labor Day
        _nth_weekday(year, 11, 3, 4),  # Thanksgiving
        _observed(date(year, 12, 25)),  # Christmas
    ]
    return frozenset(d for d in days if d is not None) | {d for d in UNSCHEDULED_CLOSURES if d.year == year}


class ExchangeHolidays:
    """The NYSE's full-day closures as a set of dates, computed by year as they are asked for."""

    def __contains__(self, day: object) -> bool:
        return isinstance(day, date) and day in nyse_holidays(day.year)

    def __repr__(self) -> str:
        return "NYSE_HOLIDAYS"


NYSE_HOLIDAYS = ExchangeHolidays()
