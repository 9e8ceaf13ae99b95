"""The US-equities rule tables the compliance gate enforces: frozen data, one version, dated regimes.

Written from SEC Rule 201 and the LULD plan with its Amendment 18. Every threshold lives
here exactly once; the rule engines (ssr.py, luld.py) and the replay's independent checker read it, so a
change of rules is a change of this file and of ``RULES_VERSION``, which the runtime reports in ``ping``.

Simplifications, on purpose:
- Rule 201 is enforced from its compliance date and LULD from the plan's first day (one date for every
  stock, not the plan's phase-in by tier); before those dates the rule is simply not in force.
- Exchange holidays are not in the tables: callers that care pass a holiday set (see sessions.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, time
from zoneinfo import ZoneInfo

from dualhrq.errors import DataError

RULES_VERSION = "us-equities-2020.02.24"  # named after the newest regime in the tables (Amendment 18)

MARKET_TZ = ZoneInfo("America/New_York")
REGULAR_OPEN = time(9, 30)
REGULAR_CLOSE = time(16, 0)

_NS_PER_S = 1_000_000_000


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
    reference_window_ns=5 * 60 * _NS_PER_S,
    reference_move=0.01,
    high_price=3.00,
    low_price=0.75,
    above_high=BandPercentage(tier1=0.05, tier2=0.10),
    middle=BandPercentage(tier1=0.20, tier2=0.20),
    below_low=BandPercentage(tier1=0.75, tier2=0.75, cap=0.15),
    limit_state_ns=15 * _NS_PER_S,
    pause_ns=5 * 60 * _NS_PER_S,
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
