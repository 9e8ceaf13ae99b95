"""Rule 201 state machine, hand-computed from the rule's text."""

from datetime import date, time

import msgspec
import pytest

from dualhrq.compliance.sessions import next_trading_day, previous_trading_day, session_of, wall_ns
from dualhrq.compliance.ssr import SSRSnapshot, SSRState
from dualhrq.data.market_rules import NYSE_HOLIDAYS, nyse_holidays
from dualhrq.data.resample import SECOND_NS
from dualhrq.errors import DataError

MON, TUE, WED, THU, FRI = (date(2021, 3, d) for d in (1, 2, 3, 4, 5))
NEXT_MON, NEXT_TUE = date(2021, 3, 8), date(2021, 3, 9)


def at(day: date, hh: int, mm: int, ss: int = 0) -> int:
    return wall_ns(day, time(hh, mm, ss))


def state_with_close(day: date, close: float, holidays: frozenset[date] = frozenset()) -> SSRState:
    """An SSRState whose prior close for ``day`` is ``close``."""
    s = SSRState(holidays)
    s.on_close(previous_trading_day(day, holidays), close)
    return s


@pytest.mark.parametrize(
    "prior_close, price, triggers",
    [
        (20.00, 18.00, True),  # exactly -10.00%
        (20.00, 18.01, False),  # just above
        (20.00, 17.99, True),
        (10.03, 9.02, True),  # threshold 9.027
        (10.03, 9.03, False),
        (50.00, 45.00, True),
        (50.00, 45.01, False),
    ],
)
def test_trigger_at_or_below_ninety_percent_of_prior_close(prior_close, price, triggers):
    s = state_with_close(WED, prior_close)
    assert s.on_trade(at(WED, 10, 0), price) is triggers
    assert s.is_active(at(WED, 10, 0, 1)) is triggers


@pytest.mark.parametrize(
    "hh, mm, ss, triggers",
    [(9, 29, 59, False), (9, 30, 0, True), (15, 59, 59, True), (16, 0, 0, False), (4, 0, 0, False)],
)
def test_only_regular_hours_trades_trigger(hh, mm, ss, triggers):
    s = state_with_close(WED, 20.0)
    assert s.on_trade(at(WED, hh, mm, ss), 17.0) is triggers


def test_restriction_lasts_rest_of_day_and_next_trading_day():
    s = state_with_close(WED, 20.0)
    assert not s.is_active(at(WED, 9, 59))
    s.on_trade(at(WED, 10, 0), 18.0)
    assert not s.is_active(at(WED, 9, 59))  # not retroactive
    assert s.is_active(at(WED, 10, 0))
    assert s.is_active(at(WED, 19, 0))  # after hours of the trigger day
    assert s.is_active(at(THU, 9, 30))
    assert s.is_active(at(THU, 23, 59, 59))
    assert not s.is_active(at(FRI, 0, 0))


def test_friday_trigger_carries_over_the_weekend_to_monday():
    s = state_with_close(FRI, 20.0)
    s.on_trade(at(FRI, 15, 0), 17.5)
    assert s.is_active(at(date(2021, 3, 6), 12, 0))  # Saturday
    assert s.is_active(at(NEXT_MON, 15, 59))
    assert not s.is_active(at(NEXT_TUE, 0, 0))


def test_holiday_is_not_a_trading_day():
    holidays = frozenset({NEXT_MON})
    s = state_with_close(FRI, 20.0, holidays)
    s.on_trade(at(FRI, 15, 0), 17.5)
    assert s.is_active(at(NEXT_TUE, 15, 0))
    assert not s.is_active(at(date(2021, 3, 10), 0, 0))


def test_retrigger_on_restricted_day_extends_by_one_day():
    s = state_with_close(MON, 20.0)
    assert s.on_trade(at(MON, 10, 0), 18.0)
    assert not s.on_trade(at(MON, 11, 0), 17.0)  # same day: nothing to extend
    s.on_close(MON, 17.5)  # Tuesday's prior close; its trigger price is 15.75
    assert not s.on_trade(at(TUE, 10, 0), 16.0)
    assert s.on_trade(at(TUE, 14, 0), 15.75)
    assert s.is_active(at(WED, 15, 0))
    assert not s.is_active(at(THU, 0, 0))


def test_without_retrigger_restriction_ends_after_next_day():
    s = state_with_close(MON, 20.0)
    s.on_trade(at(MON, 10, 0), 18.0)
    s.on_close(MON, 17.5)
    s.on_trade(at(TUE, 14, 0), 16.0)  # -8.6% of Monday's close: no new trigger
    assert not s.is_active(at(WED, 0, 0))


@pytest.mark.parametrize("active, price, bid, allowed", [
    (True, 18.01, 18.00, True),  # priced above the NBB
    (True, 18.00, 18.00, False),  # at the NBB
    (True, 17.99, 18.00, False),
    (False, 17.99, 18.00, True),  # no restriction: any price
])
def test_short_sale_must_be_priced_above_national_best_bid(active, price, bid, allowed):
    s = state_with_close(WED, 20.0)
    if active:
        s.on_trade(at(WED, 10, 0), 18.0)
    assert s.allows_short(at(WED, 10, 1), price, bid) is allowed


def test_no_prior_close_no_trigger():
    s = SSRState()
    assert not s.on_trade(at(WED, 10, 0), 0.01)
    s.on_close(WED, 20.0)  # Wednesday's own close is Thursday's prior close, not Wednesday's
    assert not s.on_trade(at(WED, 11, 0), 0.01)
    assert s.prior_close(THU) == 20.0
    assert s.on_trade(at(THU, 10, 0), 18.0)


def test_prior_close_is_latest_close_before_the_day():
    s = SSRState()
    s.on_close(MON, 10.0)
    s.on_close(TUE, 30.0)
    assert s.prior_close(TUE) == 10.0
    assert s.prior_close(WED) == 30.0
    s.on_close(TUE, 20.0)  # a corrected close replaces the old one
    assert s.prior_close(WED) == 20.0


def test_rule_not_in_force_before_its_compliance_date():
    day = date(2010, 5, 6)  # the flash crash predates Rule 201's compliance date (2011-02-28)
    s = state_with_close(day, 20.0)
    assert not s.on_trade(at(day, 14, 45), 10.0)


def test_nan_price_never_triggers():
    s = state_with_close(WED, 20.0)
    assert not s.on_trade(at(WED, 10, 0), float("nan"))


@pytest.mark.parametrize("close", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_close_is_refused_naming_the_field(close):
    with pytest.raises(DataError, match="close"):
        SSRState().on_close(WED, close)


def test_calendar_skips_weekends_and_holidays():
    assert next_trading_day(FRI) == NEXT_MON
    assert previous_trading_day(NEXT_MON) == FRI
    assert next_trading_day(FRI, frozenset({NEXT_MON})) == NEXT_TUE
    # a timestamp one nanosecond before midnight ET belongs to the earlier day (DST-correct)
    assert session_of(at(date(2021, 3, 14), 0, 0) - 1).day == date(2021, 3, 13)
    assert session_of(at(date(2021, 3, 15), 9, 30)).open_ns == at(date(2021, 3, 15), 9, 30)
    assert at(date(2021, 3, 15), 9, 30) - at(date(2021, 3, 12), 9, 30) == (3 * 24 - 1) * 3600 * SECOND_NS


@pytest.mark.parametrize("year, closed", [
    (2021, [(1, 1), (1, 18), (2, 15), (4, 2), (5, 31), (7, 5), (9, 6), (11, 25), (12, 24)]),  # Sunday/Saturday shifts
    (2022, [(1, 17), (2, 21), (4, 15), (5, 30), (6, 20), (7, 4), (9, 5), (11, 24), (12, 26)]),  # Saturday New Year
    (2024, [(1, 1), (1, 15), (2, 19), (3, 29), (5, 27), (6, 19), (7, 4), (9, 2), (11, 28), (12, 25)]),
    (2026, [(1, 1), (1, 19), (2, 16), (4, 3), (5, 25), (6, 19), (7, 3), (9, 7), (11, 26), (12, 25)]),
])
def test_the_exchange_calendar_closes_on_the_nyse_holidays_as_observed(year, closed):
    assert sorted(nyse_holidays(year)) == [date(year, m, d) for m, d in closed]
    assert date(year, closed[0][0], closed[0][1]) in NYSE_HOLIDAYS


def test_the_exchange_calendar_knows_unscheduled_closures_and_keeps_new_years_eve_open():
    assert date(2012, 10, 29) in NYSE_HOLIDAYS and date(2012, 10, 30) in NYSE_HOLIDAYS  # Hurricane Sandy
    assert date(2021, 12, 31) not in NYSE_HOLIDAYS  # New Year's Day 2022 fell on a Saturday
    assert next_trading_day(date(2024, 3, 28)) == date(2024, 4, 1)  # over Good Friday and the weekend


def test_a_trigger_the_day_before_thanksgiving_lasts_through_the_friday_after_it():
    wed, fri, mon = date(2024, 11, 27), date(2024, 11, 29), date(2024, 12, 2)
    s = SSRState()  # the exchange's calendar by default
    s.on_close(previous_trading_day(wed), 20.0)
    assert s.on_trade(at(wed, 15, 0), 17.5)
    assert s.is_active(at(fri, 15, 59))  # Thursday was no trading day: Friday is the next one
    assert not s.is_active(at(mon, 0, 0))


def test_a_snapshot_written_without_the_holidays_is_carried_over_the_holiday_it_ended_on():
    wed, fri = date(2024, 11, 27), date(2024, 11, 29)  # the Thursday between: Thanksgiving
    weekends_only = SSRState(frozenset())  # an older release's calendar
    weekends_only.on_close(previous_trading_day(wed), 20.0)
    assert weekends_only.on_trade(at(wed, 15, 0), 17.5)
    assert not weekends_only.is_active(at(fri, 10, 0))  # ended with the holiday: too soon
    old_row = msgspec.json.decode(  # as a release from before the calendar wrote it: without the marker
        msgspec.json.encode(msgspec.structs.asdict(weekends_only.snapshot()) | {"holiday_calendar": None})
        .replace(b',"holiday_calendar":null', b""), type=SSRSnapshot)
    restored = SSRState.restore(old_row)  # under the exchange's calendar
    assert restored.is_active(at(fri, 23, 59, 59)) and not restored.is_active(at(date(2024, 11, 30), 0, 0))
    assert restored.is_active(at(wed, 15, 0)) and not restored.is_active(at(wed, 14, 59))


def test_a_restriction_the_feed_held_on_a_saturday_still_ends_that_saturday_after_a_restore():
    sat = date(2024, 11, 30)
    s = SSRState()
    s.hold(at(sat, 10, 0))  # the feed says a restriction is in force on a weekend day
    restored = SSRState.restore(s.snapshot())
    assert restored.is_active(at(sat, 23, 59, 59)) and not restored.is_active(at(date(2024, 12, 2), 10, 0))


def test_restoring_a_snapshot_this_calendar_wrote_changes_nothing():
    s = state_with_close(FRI, 20.0)
    s.on_trade(at(FRI, 15, 0), 17.5)
    for snap in (s.snapshot(), SSRState().snapshot()):  # a restriction, and none at all
        assert SSRState.restore(snap, frozenset()).snapshot() == snap
