"""Trading days and regular hours in market time (ET), for timestamps in int nanoseconds since epoch UTC.

The rules speak in ET wall-clock times and trading days; the gate runs on the serving hot path, so a
timestamp's session (its ET day with the nanosecond bounds of that day and of regular hours) is computed
once per day and reused: the common case is two integer comparisons.

Trading days are weekdays but the exchange's holidays (by default ``NYSE_HOLIDAYS``; any container of dates will
do): a holiday simply is not a trading day, so an SSR restriction set on the day before it carries over it.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import lru_cache

from dualhrq.data.market_rules import MARKET_TZ, NYSE_HOLIDAYS, REGULAR_CLOSE, REGULAR_OPEN
from dualhrq.data.resample import SECOND_NS

Holidays = Container[date]


def wall_ns(day: date, at: time) -> int:
    """Nanoseconds since epoch of an ET wall-clock time (DST-correct)."""
    return int(datetime.combine(day, at, tzinfo=MARKET_TZ).timestamp()) * SECOND_NS


@dataclass(frozen=True, slots=True)
class Session:
    """One ET calendar day: [start_ns, end_ns) is the whole day, [open_ns, close_ns) its regular hours."""

    day: date
    start_ns: int
    end_ns: int
    open_ns: int
    close_ns: int

    def in_regular_hours(self, ts: int) -> bool:
        return self.open_ns <= ts < self.close_ns


@lru_cache(maxsize=256)
def session_for_day(day: date) -> Session:
    return Session(
        day=day,
        start_ns=wall_ns(day, time(0)),
        end_ns=wall_ns(day + timedelta(days=1), time(0)),
        open_ns=wall_ns(day, REGULAR_OPEN),
        close_ns=wall_ns(day, REGULAR_CLOSE),
    )


_latest: Session = session_for_day(date(1970, 1, 1))  # a hint only: replacing it is atomic, so no lock


def session_of(ts: int) -> Session:
    """The ET day that contains ``ts`` (int ns since epoch UTC)."""
    global _latest
    hint = _latest
    if hint.start_ns <= ts < hint.end_ns:
        return hint
    day = datetime.fromtimestamp(ts // SECOND_NS, tz=MARKET_TZ).date()  # floor: exact at midnight
    _latest = session_for_day(day)
    return _latest


def is_trading_day(day: date, holidays: Holidays = NYSE_HOLIDAYS) -> bool:
    return day.weekday() < 5 and day not in holidays


def next_trading_day(day: date, holidays: Holidays = NYSE_HOLIDAYS) -> date:
    day += timedelta(days=1)
    while not is_trading_day(day, holidays):
        day += timedelta(days=1)
    return day


def previous_trading_day(day: date, holidays: Holidays = NYSE_HOLIDAYS) -> date:
    day -= timedelta(days=1)
    while not is_trading_day(day, holidays):
        day -= timedelta(days=1)
    return day
