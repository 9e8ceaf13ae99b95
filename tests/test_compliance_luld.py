"""LULD bands, reference price and limit-state/pause transitions, hand-computed from the LULD plan's rule tables (dualhrq.data.market_rules)."""

import dataclasses
from datetime import date, time

import pytest

from dualhrq.compliance.luld import LIMIT, NORMAL, PAUSED, LimitStateMachine, ReferencePriceTracker, bands
from dualhrq.compliance.sessions import wall_ns
from dualhrq.data.market_rules import LULD, RULES_VERSION, SSR
from dualhrq.data.resample import SECOND_NS
from dualhrq.errors import DataError

AFTER = date(2021, 3, 3)  # Amendment 18 in force
BEFORE = date(2019, 3, 6)  # the old doubling regime


def at(day: date, hh: int, mm: int, ss: int = 0) -> int:
    return wall_ns(day, time(hh, mm, ss))


@pytest.mark.parametrize(
    "reference, prior_close, tier, ts, expected",
    [
        # the plan's worked example: Tier 1, prior close $50
        (50.00, 50.00, 1, at(AFTER, 10, 0), (47.50, 52.50)),
        (50.62, 50.00, 1, at(AFTER, 10, 0), (48.09, 53.15)),  # 50.62 ± 2.531
        (50.62, 50.00, 1, at(AFTER, 15, 40), (45.56, 55.68)),  # doubled to 10%
        # the closing window starts at 15:35:00 exactly and ends at 16:00
        (50.62, 50.00, 1, at(AFTER, 15, 35) - 1, (48.09, 53.15)),
        (50.62, 50.00, 1, at(AFTER, 15, 35), (45.56, 55.68)),
        (50.62, 50.00, 1, at(AFTER, 15, 59, 59), (45.56, 55.68)),
        (50.62, 50.00, 1, at(AFTER, 16, 0), (48.09, 53.15)),
        (50.62, 50.00, 1, at(BEFORE, 15, 35), (45.56, 55.68)),
        (50.62, 50.00, 1, at(BEFORE, 15, 35) - 1, (48.09, 53.15)),
        # opening window 9:30-9:45 doubles before 2020-02-24 only
        (50.00, 50.00, 1, at(BEFORE, 9, 40), (45.00, 55.00)),
        (50.00, 50.00, 1, at(BEFORE, 9, 45), (47.50, 52.50)),
        (50.00, 50.00, 1, at(AFTER, 9, 40), (47.50, 52.50)),
        (50.00, 50.00, 1, at(date(2020, 2, 21), 9, 40), (45.00, 55.00)),  # the Friday before
        (50.00, 50.00, 1, at(date(2020, 2, 24), 9, 40), (47.50, 52.50)),  # the effective Monday
        # Tier 2 above $3: 10%; doubles at the close before 2020-02-24 only
        (50.00, 50.00, 2, at(AFTER, 10, 0), (45.00, 55.00)),
        (50.00, 50.00, 2, at(AFTER, 15, 40), (45.00, 55.00)),
        (50.00, 50.00, 2, at(BEFORE, 15, 40), (40.00, 60.00)),
        # Tier 2 at or below $3.00 doubles after 2020-02-24; the $3.00 test reads the reference price
        (2.50, 2.50, 2, at(AFTER, 15, 40), (1.50, 3.50)),
        (2.90, 5.00, 2, at(AFTER, 15, 40), (2.32, 3.48)),  # 10% row (prior close), doubled (reference <= 3)
        (3.10, 2.50, 2, at(AFTER, 15, 40), (2.48, 3.72)),  # 20% row (prior close), not doubled (reference > 3)
        # the $0.75-$3.00 row: 20% for both tiers, bounds inclusive
        (3.00, 3.00, 1, at(AFTER, 10, 0), (2.40, 3.60)),
        (3.00, 3.01, 1, at(AFTER, 10, 0), (2.85, 3.15)),  # prior close above $3.00: 5%
        (0.75, 0.75, 1, at(AFTER, 10, 0), (0.60, 0.90)),
        (2.00, 2.00, 2, at(AFTER, 10, 0), (1.60, 2.40)),
        # below $0.75: the lesser of $0.15 or 75%
        (0.74, 0.74, 1, at(AFTER, 10, 0), (0.59, 0.89)),  # $0.15 < 0.555
        (0.10, 0.10, 1, at(AFTER, 10, 0), (0.03, 0.17)),  # 75% = 0.075 < $0.15; 0.025/0.175 rounded inward
        (0.50, 0.50, 1, at(AFTER, 15, 40), (0.20, 0.80)),  # doubled: $0.30
        (0.10, 0.10, 1, at(AFTER, 15, 40), (0.0, 0.25)),  # doubled 150% reaches below zero: no lower limit
        # inward penny rounding where nearest would differ: 10.11 ± 0.5055 = 9.6045 / 10.6155
        (10.11, 10.00, 1, at(AFTER, 10, 0), (9.61, 10.61)),
    ],
)
def test_bands_match_the_rule_text(reference, prior_close, tier, ts, expected):
    assert bands(reference, prior_close, tier, ts) == expected


@pytest.mark.parametrize(
    "args, field",
    [
        ((0.0, 50.0, 1, at(AFTER, 10, 0)), "reference_price"),
        ((float("nan"), 50.0, 1, at(AFTER, 10, 0)), "reference_price"),
        ((50.0, -1.0, 1, at(AFTER, 10, 0)), "prior_close"),
        ((50.0, 50.0, 3, at(AFTER, 10, 0)), "tier"),
        ((50.0, 50.0, 1, at(date(2012, 6, 1), 10, 0)), "before the LULD plan"),
    ],
)
def test_bands_refuse_bad_input_naming_it(args, field):
    with pytest.raises(DataError, match=field):
        bands(*args)


def test_rule_tables_are_frozen_and_versioned():
    assert RULES_VERSION == "us-equities-2020.02.24+nyse-holidays"
    assert LULD.regimes[-1].effective == date(2020, 2, 24)
    with pytest.raises(dataclasses.FrozenInstanceError):
        SSR.trigger_ratio = 0.8  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        LULD.regimes[0].tier2_max_reference = 1.0  # type: ignore[misc]


MIN = 60 * SECOND_NS
OPEN = at(AFTER, 9, 30)


def test_reference_follows_worked_example():
    tracker = ReferencePriceTracker()
    tracker.start_day(prior_close=50.0)
    assert tracker.reference == 50.0  # opened on a quote: the prior close stands in
    assert tracker.on_trade(OPEN, 50.00)  # the opening price is the first reference
    assert not tracker.on_trade(OPEN + 6 * MIN, 50.10)  # 5-minute mean 50.10: 0.2% away
    assert tracker.reference == 50.00
    assert tracker.on_trade(OPEN + 12 * MIN, 50.62)  # mean 50.62: 1.24% away
    assert tracker.reference == 50.62


def test_reference_moves_on_exactly_one_percent_of_the_window_mean():
    tracker = ReferencePriceTracker()
    tracker.start_day(prior_close=49.0)
    tracker.on_trade(OPEN, 50.0)
    assert not tracker.on_trade(OPEN + 1 * MIN, 50.2)  # mean 50.10
    assert not tracker.on_trade(OPEN + 2 * MIN, 50.8)  # mean 50.333: 0.67%
    assert tracker.on_trade(OPEN + 3 * MIN, 51.0)  # mean (50 + 50.2 + 50.8 + 51) / 4 = 50.50: 1.00%
    assert tracker.reference == pytest.approx(50.5)


def test_trades_leave_the_window_after_five_minutes():
    tracker = ReferencePriceTracker()
    tracker.start_day(prior_close=50.0)
    tracker.on_trade(OPEN, 50.0)
    tracker.on_trade(OPEN + 1 * MIN, 50.0)
    # at +6 min the two 50.00 trades are out: the mean is 50.60 alone, not (50 + 50 + 50.6) / 3
    assert tracker.on_trade(OPEN + 6 * MIN, 50.6)
    assert tracker.reference == 50.6
    # a trade exactly five minutes old is out too
    tracker.on_trade(OPEN + 7 * MIN, 50.6)
    assert tracker.on_trade(OPEN + 12 * MIN, 51.2)  # window: 51.2 alone (50.6 at +7 min is 5 min old)
    assert tracker.reference == 51.2


def test_reopening_trade_is_the_new_reference():
    tracker = ReferencePriceTracker()
    tracker.start_day(prior_close=50.0)
    tracker.on_trade(OPEN, 50.0)
    tracker.reopen()
    assert tracker.reference == 50.0  # stands in until the reopening trade
    assert tracker.on_trade(OPEN + 20 * MIN, 47.0)
    assert tracker.reference == 47.0


S = SECOND_NS
LOW, UP = 47.50, 52.50


@pytest.mark.parametrize(
    "quotes, states",
    [
        # (seconds after t0, bid, ask) -> state after each quote
        ([(0, 47.49, 47.50), (14, 47.49, 47.50), (14.9, 47.50, 47.51)], [LIMIT, LIMIT, NORMAL]),  # resolved in time
        ([(0, 52.50, 52.51), (10, 52.49, 52.51)], [LIMIT, NORMAL]),  # limit up: bid at the upper band
        ([(0, 47.49, 47.50), (15, 47.50, 47.51)], [LIMIT, PAUSED]),  # resolution at exactly 15 s is too late
        ([(0, 47.49, 47.50), (20, 47.49, 47.50), (314.9, 50, 50.01)], [LIMIT, PAUSED, PAUSED]),
        ([(0, 47.49, 47.50), (20, 47.49, 47.50), (315, 50, 50.01)], [LIMIT, PAUSED, NORMAL]),  # pause: 15 s + 5 min
        ([(0, 47.40, 47.45)], [LIMIT]),  # an offer through the band counts as at it
        ([(0, 47.49, 47.51), (1, 52.49, 52.51)], [NORMAL, NORMAL]),
    ],
)
def test_limit_state_and_pause_transitions(quotes, states):
    machine = LimitStateMachine()
    seen = [machine.on_quote(OPEN + int(dt * S), bid, ask, LOW, UP) for dt, bid, ask in quotes]
    assert seen == states


def test_limit_state_times_out_without_quotes():
    machine = LimitStateMachine()
    machine.on_quote(OPEN, 47.49, 47.50, LOW, UP)
    assert machine.state_at(OPEN + 15 * S - 1) == LIMIT
    assert machine.state_at(OPEN + 15 * S) == PAUSED
    assert machine.state_at(OPEN + 315 * S) == NORMAL
    assert machine.advance(OPEN + 14 * S) == LIMIT  # state_at did not move the machine
    assert machine.advance(OPEN + 16 * S) == PAUSED
