"""Two timeframes from one: coarse bars aggregated from fine bars over CLOSED calendar periods only.

A coarse bar's ``t`` is its period's end, the moment the bar became known, so "visible at fine bar i" is
``coarse.t <= fine.t[i]`` (the convention of `dualhrq.data.bars`). A fine bar belongs to the period that
contains the last instant before its close, so an hourly bar closing at midnight counts for the day it ends.
Periods are fixed lengths: days start at 00:00 UTC, weeks on Monday 00:00 UTC (calendar months are not
supported: they have no fixed length).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from numba import njit

from dualhrq.data.bars import Bars
from dualhrq.errors import ConfigurationError, DataError

T = TypeVar("T", int, np.ndarray)

SECOND_NS = 10**9
DAY_NS = 86_400 * SECOND_NS
WEEK_NS = 7 * DAY_NS
_UNIT_NS = {"s": SECOND_NS, "m": 60 * SECOND_NS, "min": 60 * SECOND_NS, "h": 3600 * SECOND_NS, "d": DAY_NS,
            "w": WEEK_NS}
_MONDAY_NS = 4 * DAY_NS  # 1970-01-05, the first Monday after the epoch: weeks start there
_RULE_RE = re.compile(r"^\s*(\d*)\s*([a-zA-Z]+)\s*$")


@dataclass(frozen=True)
class Period:
    """A calendar period: its length and one boundary (every boundary is anchor + k * length)."""

    ns: int
    anchor_ns: int = 0


def parse_rule(rule: str) -> Period:
    """'1h', '4h', '1D', '1d', 'W', '1w', '30min' -> Period. Weekly periods start on Monday 00:00 UTC."""
    m = _RULE_RE.match(rule)
    unit = m.group(2) if m else ""
    if m is None or unit.lower() not in _UNIT_NS or unit == "M":
        raise ConfigurationError(f"data.coarse_rule: {rule!r} is not a fixed period like '1h', '4h', '1d' or '1w' "
                                 "(calendar months are not supported)")
    count = int(m.group(1) or 1)
    if count < 1:
        raise ConfigurationError(f"data.coarse_rule: {rule!r}: the period must be at least 1 {unit}")
    unit = unit.lower()
    return Period(count * _UNIT_NS[unit], _MONDAY_NS if unit == "w" else 0)


def timeframe_name(ns: int) -> str:
    """Bar length in ns -> the vocabulary's name ('1h', '5m', '1d', '1w'): the largest unit that divides it."""
    for unit, size in (("w", WEEK_NS), ("d", DAY_NS), ("h", _UNIT_NS["h"]), ("m", _UNIT_NS["m"]), ("s", SECOND_NS)):
        if ns >= size and ns % size == 0:
            return f"{ns // size}{unit}"
    raise DataError(f"bar length of {ns} ns is not a whole number of seconds")


def default_coarse_rule(timeframe: str) -> str:
    """The coarse timeframe paired with a fine one: intraday -> daily, daily -> weekly."""
    ns = parse_rule(timeframe).ns
    if ns < DAY_NS:
        return "1d"
    if ns == DAY_NS:
        return "1w"
    raise ConfigurationError(f"data.coarse_rule: no default coarse timeframe for {timeframe} bars; set one")


def resample(fine: Bars, rule: str) -> Bars:
    """Coarse bars of the periods that have closed by the last fine bar (t = period end, first open,
    highest high, lowest low, last close, summed volume). A period still open at the end is left out."""
    period = parse_rule(rule)
    if len(fine) == 0:
        return fine
    if len(fine) > 1 and period.ns <= int(np.diff(fine.t).min()):
        raise ConfigurationError(f"data.coarse_rule: {rule!r} is not longer than the fine bars; the coarse "
                                 "timeframe must aggregate several fine bars")
    pid = (fine.t - 1 - period.anchor_ns) // period.ns
    starts = np.flatnonzero(np.concatenate([[True], pid[1:] != pid[:-1]]))
    lasts = np.concatenate([starts[1:], [len(fine)]]) - 1
    end = period_end(fine.t[starts], period)
    closed = end <= fine.t[-1]
    coarse = Bars(end, fine.o[starts], np.maximum.reduceat(fine.h, starts), np.minimum.reduceat(fine.l, starts),
                  fine.c[lasts], np.add.reduceat(fine.v, starts))
    return coarse.slice(0, int(closed.sum()))  # only the last period can still be open


def period_end(t: T, period: Period) -> T:
    """The end of the period that a bar closing at `t` (ns, an int or an array) belongs to: a bar closing
    exactly at a period's end is that period's last."""
    return ((t - 1 - period.anchor_ns) // period.ns + 1) * period.ns + period.anchor_ns


def first_off_period_end(t: np.ndarray, period: Period) -> int:
    """The index of the first time in ``t`` that is not the end of one of `period`'s periods (as `resample`
    stamps its bars), or -1: the check of coarse bars a caller made, without an array per call."""
    return _first_off(np.ascontiguousarray(t, np.int64), period.anchor_ns, period.ns)


@njit(cache=True, nogil=True)
def _first_off(t: np.ndarray, anchor: int, length: int) -> int:
    for i in range(len(t)):
        if (t[i] - anchor) % length:
            return i
    return -1


def visible_counts(coarse_t: np.ndarray, fine_t: np.ndarray) -> np.ndarray:
    """For each fine bar, how many coarse bars are known at its time (coarse.t <= fine.t)."""
    return np.searchsorted(coarse_t, fine_t, side="right")
