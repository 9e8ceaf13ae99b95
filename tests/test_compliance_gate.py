"""The compliance gate: action -> implied order, SSR / LULD / risk decisions, kill switch, and a property test
that no gated output ever violates a rule (judged by the replay's independent checker)."""

from datetime import date, time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dualhrq.compliance.checker import ViolationChecker
from dualhrq.compliance.gate import ACTIONS, REASONS, ComplianceGate, MarketSnapshot, implied_order
from dualhrq.compliance.sessions import next_trading_day, session_of, wall_ns
from dualhrq.config import ComplianceConfig, RiskConfig
from dualhrq.data.resample import SECOND_NS
from dualhrq.errors import DataError

DAY = date(2021, 3, 3)  # a Wednesday, Amendment 18 in force
NEXT = date(2021, 3, 4)
S = SECOND_NS


def at(hh: int, mm: int, ss: int = 0, day: date = DAY) -> int:
    return wall_ns(day, time(hh, mm, ss))


def snap(ts: int, last: float = 50.0, bid: float | None = None, ask: float | None = None,
         prior_close: float = 50.0, tier: int = 1) -> MarketSnapshot:
    return MarketSnapshot(ts, last, bid if bid is not None else last - 0.01, ask if ask is not None else last + 0.01,
                          prior_close, tier)


def gate(**risk: float) -> ComplianceGate:
    limits = {"max_position": 10.0, "max_order_quantity": 10.0, "max_notional": 1e9} | risk
    return ComplianceGate(ComplianceConfig(risk=RiskConfig(**limits)))


def with_ssr(g: ComplianceGate) -> int:
    """Trigger SSR on X (prior close 50, trade at 45.00 = -10%) and return a later regular-hours ts."""
    g.observe("X", snap(at(10, 0), last=45.0))
    assert g.status("X", at(10, 0)).ssr_active
    return at(10, 1)


@pytest.mark.parametrize(
    "action, quantity, position, order",
    [
        ("BUY", 2.0, 0.0, (1, 2.0)),
        ("SELL", 2.0, 0.0, (-1, 2.0)),  # opens a short
        ("SELL", 2.0, -1.0, (-1, 2.0)),  # adds to a short
        ("SELL", 2.0, 5.0, (-1, 2.0)),  # a long sale
        ("HOLD", 2.0, 5.0, (0, 0.0)),
        ("CLOSE_LONG", 0.3, 5.0, (-1, 5.0)),  # closes the whole position
        ("CLOSE_LONG", 0.3, -5.0, (0, 0.0)),  # nothing to close
        ("CLOSE_SHORT", 0.3, -5.0, (1, 5.0)),
        ("CLOSE_SHORT", 0.3, 0.0, (0, 0.0)),
    ],
)
def test_action_maps_to_implied_order(action, quantity, position, order):
    assert implied_order(action, quantity, position) == order


def test_short_sale_under_ssr_becomes_hold_with_reason():
    g = gate()
    ts = with_ssr(g)
    d = g.check("X", "SELL", 1.0, snap(ts, last=45.5))
    assert (d.action, d.quantity, d.allowed, d.original_action, d.reasons) == ("HOLD", 0.0, False, "SELL", ["ssr"])
    assert g.position("X") == 0.0


def test_long_sale_is_never_ssr_restricted():
    g = gate()
    ts = with_ssr(g)
    d = g.check("X", "CLOSE_LONG", 0.0, snap(ts, last=45.5), position=3.0)
    assert (d.action, d.quantity, d.allowed, d.reasons) == ("CLOSE_LONG", 3.0, True, [])
    d = g.check("X", "SELL", 1.0, snap(ts + S, last=45.5), position=3.0)  # SELL within a long: long sale
    assert (d.action, d.quantity, d.allowed) == ("SELL", 1.0, True)
    assert g.position("X") == 2.0


def test_sale_through_zero_under_ssr_is_clipped_to_the_long_part():
    g = gate()
    ts = with_ssr(g)
    d = g.check("X", "SELL", 3.0, snap(ts, last=45.5), position=1.0)
    assert (d.action, d.quantity, d.allowed, d.reasons) == ("SELL", 1.0, True, ["ssr"])
    assert g.position("X") == 0.0


def test_buys_and_covers_pass_under_ssr():
    g = gate()
    ts = with_ssr(g)
    assert g.check("X", "BUY", 1.0, snap(ts, last=45.5)).allowed
    assert g.check("X", "CLOSE_SHORT", 0.0, snap(ts + S, last=45.5), position=-2.0).quantity == 2.0


def test_ssr_carries_into_next_day_and_then_lifts():
    g = gate()
    with_ssr(g)
    next_day = snap(at(11, 0, day=NEXT), last=46.0, prior_close=46.0)
    assert g.check("X", "SELL", 1.0, next_day).reasons == ["ssr"]
    day_after = snap(at(11, 0, day=date(2021, 3, 5)), last=46.0, prior_close=46.0)
    assert g.check("X", "SELL", 1.0, day_after).allowed


def test_order_outside_luld_band_is_held():
    g = gate()
    g.observe("X", snap(at(10, 0), last=50.0))  # reference 50: band 47.50-52.50
    # the quotes move, the trades stay at 50 (a trade far away would move the reference)
    buy = g.check("X", "BUY", 1.0, snap(at(10, 0, 1), last=50.0, bid=52.48, ask=52.51))
    assert (buy.action, buy.reasons) == ("HOLD", ["luld_band"])
    sell = g.check("X", "SELL", 1.0, snap(at(10, 0, 2), last=50.0, bid=47.49, ask=47.52))
    assert (sell.action, sell.reasons) == ("HOLD", ["luld_band"])
    inside = g.check("X", "BUY", 1.0, snap(at(10, 0, 3), last=50.0, bid=52.48, ask=52.50))
    assert inside.allowed  # at the band is inside


def test_unresolved_limit_state_pauses_all_orders_for_five_minutes():
    g = gate()
    g.observe("X", snap(at(10, 0), last=50.0))
    g.observe("X", snap(at(10, 1), last=50.0, bid=47.49, ask=47.50))  # offer at the lower band: limit state
    assert g.status("X", at(10, 1, 14)).luld_state == "limit"
    d = g.check("X", "BUY", 1.0, snap(at(10, 1, 15), last=50.0, bid=47.49, ask=47.50))
    assert (d.action, d.reasons) == ("HOLD", ["luld_pause"])
    assert g.check("X", "BUY", 1.0, snap(at(10, 6, 14), last=47.8, bid=47.79, ask=47.81)).reasons == ["luld_pause"]
    resumed = g.check("X", "BUY", 1.0, snap(at(10, 6, 15), last=47.8, bid=47.79, ask=47.81))
    assert resumed.allowed
    assert g.status("X", at(10, 6, 15)).reference == 47.8  # the reopening trade is the reference


def test_luld_does_not_apply_outside_regular_hours():
    g = gate()
    d = g.check("X", "BUY", 1.0, snap(at(17, 0), last=60.0, bid=59.99, ask=60.01))
    assert d.allowed
    assert g.status("X", at(17, 0)).luld_state == "off"


@pytest.mark.parametrize(
    "risk, action, quantity, position, price, expected",
    [
        ({"max_order_quantity": 2.0}, "BUY", 5.0, 0.0, 50.0, ("BUY", 2.0, ["risk_limit"])),
        ({"max_position": 3.0}, "BUY", 5.0, 1.0, 50.0, ("BUY", 2.0, ["risk_limit"])),
        ({"max_position": 3.0}, "BUY", 1.0, 3.0, 50.0, ("HOLD", 0.0, ["risk_limit"])),
        ({"max_position": 3.0}, "SELL", 5.0, 0.0, 50.0, ("SELL", 3.0, ["risk_limit"])),
        ({"max_position": 3.0}, "SELL", 5.0, 2.0, 50.0, ("SELL", 5.0, [])),  # ends at -3: within
        ({"max_notional": 100.0}, "BUY", 5.0, 0.0, 49.99, ("BUY", 100.0 / 50.0, ["risk_limit"])),  # at the ask
        ({"max_position": 1.0}, "CLOSE_LONG", 0.0, 5.0, 50.0, ("CLOSE_LONG", 5.0, [])),  # reducing: allowed
        ({"max_order_quantity": 2.0}, "CLOSE_LONG", 0.0, 5.0, 50.0, ("CLOSE_LONG", 2.0, ["risk_limit"])),
    ],
)
def test_risk_limits_clip_quantities(risk, action, quantity, position, price, expected):
    g = gate(**risk)
    d = g.check("X", action, quantity, snap(at(10, 0), last=price), position=position)
    assert (d.action, d.quantity, d.reasons) == expected
    assert d.allowed is (d.action != "HOLD")


def test_kill_switch_holds_every_action():
    g = gate()
    g.set_kill_switch(True)
    for i, action in enumerate(ACTIONS):
        d = g.check("X", action, 1.0, snap(at(10, 0, i)))
        assert (d.action, d.quantity, d.allowed, d.original_action, d.reasons) == (
            "HOLD", 0.0, False, action, ["kill_switch"])
    g.set_kill_switch(False)
    assert g.check("X", "BUY", 1.0, snap(at(10, 1))).allowed


def test_gate_simulates_position_unless_given():
    g = gate(max_position=2.0)
    g.check("X", "BUY", 1.5, snap(at(10, 0)))
    assert g.position("X") == 1.5
    assert g.check("X", "BUY", 1.5, snap(at(10, 1))).quantity == 0.5
    g.check("X", "CLOSE_LONG", 0.0, snap(at(10, 2)))
    assert g.position("X") == 0.0
    g.check("X", "SELL", 1.0, snap(at(10, 3)), position=-1.5)  # the caller's position wins
    assert g.position("X") == -2.0
    assert g.position("Y") == 0.0  # instruments are independent


def test_disabled_gate_passes_actions_through():
    g = ComplianceGate(ComplianceConfig(enabled=False))
    d = g.check("X", "SELL", 99.0, snap(at(10, 0), last=1.0, prior_close=50.0))
    assert (d.action, d.quantity, d.allowed, d.reasons) == ("SELL", 99.0, True, [])


@pytest.mark.parametrize("action, quantity, position, field", [
    ("SHORT", 1.0, None, "action"),
    ("BUY", -1.0, None, "quantity"),
    ("BUY", float("nan"), None, "quantity"),
    ("BUY", 1.0, float("inf"), "position"),
    ("CLOSE_LONG", 0.0, 1e300, "position"),  # finite, but no order of that many units is an order
])
def test_bad_decision_input_is_refused_naming_the_field(action, quantity, position, field):
    with pytest.raises(DataError, match=field):
        gate().check("X", action, quantity, snap(at(10, 0)), position=position)


@pytest.mark.parametrize("kwargs, field", [
    ({"ts": 1.5}, "market.ts"),
    ({"bid": 0.0}, "market.bid"),
    ({"ask": float("nan")}, "market.ask"),
    ({"prior_close": -1.0}, "market.prior_close"),
    ({"luld_tier": 3}, "market.luld_tier"),
    ({"bid": 50.02, "ask": 50.01}, "market.bid"),  # a crossed quote
    ({"ts": -(2**63)}, "market.ts"),
])
def test_bad_market_snapshot_is_refused_naming_the_field(kwargs, field):
    fields = {"ts": at(10, 0), "last": 50.0, "bid": 49.99, "ask": 50.01, "prior_close": 50.0, "luld_tier": 1}
    with pytest.raises(DataError, match=field):
        MarketSnapshot(**(fields | kwargs))


# ---------------------------------------------------------------- property: no gated output violates a rule

_step = st.tuples(
    st.integers(1, 40),  # seconds since the previous snapshot
    st.booleans() | st.just(False),  # move to the next trading day's open first (the close becomes prior close)
    st.integers(-400, 300) | st.just(-1100),  # price move in basis points (or a crash), rounded to the cent
    st.sampled_from(["normal", "normal", "at_lower", "at_upper"]),  # where the quote sits
    st.sampled_from(ACTIONS),
    st.floats(0.0, 3.0, allow_nan=False),
    st.booleans() | st.just(True),  # check an action (or only observe the market)
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prior_close=st.sampled_from([0.60, 2.50, 50.0]),
    tier=st.sampled_from([1, 2]),
    start=st.sampled_from([at(9, 29, 50), at(15, 34, 0), at(15, 58, 0), at(10, 0, 0, day=date(2019, 3, 6))]),
    steps=st.lists(_step, min_size=1, max_size=80),
)
def test_no_gated_output_ever_violates_a_rule(prior_close, tier, start, steps):
    risk = RiskConfig(max_position=2.0, max_order_quantity=1.5, max_notional=100.0)
    g = ComplianceGate(ComplianceConfig(risk=risk))
    checker = ViolationChecker(risk)
    ts, price = start, prior_close
    for seconds, overnight, move, quote, action, quantity, decide in steps:
        if overnight:
            prior_close = price
            ts = wall_ns(next_trading_day(session_of(ts).day), time(9, 30))
        ts += seconds * S
        price = max(0.01, round(price * (1 + move / 1e4), 2))
        status = g.status("X", ts)
        bid, ask = max(price - 0.01, 0.005), price + 0.01
        if quote == "at_lower" and status.lower:
            bid, ask = max(status.lower - 0.01, 0.005), status.lower
        elif quote == "at_upper" and status.upper:
            bid, ask = status.upper, status.upper + 0.01
        market = MarketSnapshot(ts, price, bid, ask, prior_close, tier)
        if not decide:
            g.observe("X", market)
            checker.record(market)
            continue
        decision = g.check("X", action, quantity, market)
        checker.record(market)
        assert checker.verify(market, decision) == []
        assert set(decision.reasons) <= set(REASONS)
        assert decision.action in (action, "HOLD")
        assert decision.allowed == (decision.action == action) or action == "HOLD"
        if not decision.allowed:
            assert (decision.action, decision.quantity) == ("HOLD", 0.0)
        assert g.position("X") == pytest.approx(checker.position, abs=1e-9)


def test_a_sale_cut_to_a_tiny_long_under_ssr_sells_exactly_the_long():
    """Found by the property above: qty - short_qty rounded a hair above a 5e-05 long and sold short 1e-16."""
    risk = RiskConfig(max_position=2.0, max_order_quantity=1.5, max_notional=100.0)
    g, checker = ComplianceGate(ComplianceConfig(risk=risk)), ViolationChecker(risk)
    ts = at(9, 29, 54)  # the sale is the first regular-hours print: it triggers Rule 201 and sets the LULD reference
    steps = [(0.6, None, 0), (0.53, None, 0), (0.47, "BUY", 5e-05), (0.42, None, 0), (0.37, None, 0),
             (0.33, None, 0), (0.29, "SELL", 2.0)]
    for i, (price, action, qty) in enumerate(steps):
        market = MarketSnapshot(ts + i * S, price, price - 0.01, price + 0.01, 0.6, 1)
        if action is None:
            g.observe("X", market)
            checker.record(market)
            continue
        decision = g.check("X", action, qty, market)
        checker.record(market)
        assert checker.verify(market, decision) == []
    assert decision.quantity == 5e-05 and "ssr" in decision.reasons and g.position("X") == 0.0
