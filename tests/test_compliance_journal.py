"""The gate's state written through to its SQLite journal: a new gate on the same file (a restart, or a worker
taking an instrument over) decides exactly as the old one would have, corrupt rows and bad paths are errors
that name what is wrong, and a SIGKILL right after a decision loses nothing. Also market.position and
market.ssr_active, with and without a journal."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
from datetime import date, time
from pathlib import Path

import pytest

from dualhrq.compliance.gate import ComplianceGate, MarketSnapshot
from dualhrq.compliance.journal import StateJournal
from dualhrq.compliance.sessions import wall_ns
from dualhrq.config import ComplianceConfig, RiskConfig
from dualhrq.data.resample import SECOND_NS
from dualhrq.errors import ConfigurationError, DataError

DAY, NEXT, AFTER = date(2021, 3, 3), date(2021, 3, 4), date(2021, 3, 5)  # Wednesday to Friday
S = SECOND_NS
REPO = Path(__file__).resolve().parents[1]


def at(hh: int, mm: int, ss: int = 0, day: date = DAY) -> int:
    return wall_ns(day, time(hh, mm, ss))


def snap(ts: int, last: float = 50.0, bid: float | None = None, ask: float | None = None,
         prior_close: float = 50.0, ssr_active: bool = False) -> MarketSnapshot:
    return MarketSnapshot(ts, last, last - 0.01 if bid is None else bid, last + 0.01 if ask is None else ask,
                          prior_close, 1, ssr_active)


def config(path: Path | None, **risk: float) -> ComplianceConfig:
    limits = {"max_position": 10.0, "max_order_quantity": 10.0, "max_notional": 1e9} | risk
    return ComplianceConfig(risk=RiskConfig(**limits), state_path=None if path is None else str(path))


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "compliance.sqlite"


def test_an_ssr_restriction_survives_a_restart_for_the_rest_of_its_window(store):
    first = ComplianceGate(config(store))
    first.observe("X", snap(at(10, 0), last=45.0))  # -10% from the prior close: restricted today and tomorrow
    first.close()

    gate = ComplianceGate(config(store))
    held = gate.check("X", "SELL", 1.0, snap(at(10, 5), last=46.0))
    assert (held.action, held.allowed, held.reasons) == ("HOLD", False, ["ssr"])
    tomorrow = gate.check("X", "SELL", 1.0, snap(at(15, 59, day=NEXT), last=46.0, prior_close=46.0))
    assert tomorrow.reasons == ["ssr"] and not tomorrow.allowed
    gate.close()
    friday = ComplianceGate(config(store)).check("X", "SELL", 1.0, snap(at(9, 31, day=AFTER), last=46.0,
                                                                        prior_close=46.0))
    assert friday.allowed and friday.action == "SELL"


def test_position_limit_holds_across_a_handover_between_gates(store):
    allowed = 0.0
    first = ComplianceGate(config(store, max_position=1.0, max_order_quantity=1.0))
    for i in range(5):
        allowed += first.check("X", "BUY", 1.0, snap(at(10, 0, i))).quantity
    first.close()
    del first
    second = ComplianceGate(config(store, max_position=1.0, max_order_quantity=1.0))
    for i in range(5, 10):
        allowed += second.check("X", "BUY", 1.0, snap(at(10, 0, i))).quantity
    assert allowed == 1.0
    assert second.position("X") == 1.0


def test_two_gates_alternating_on_one_instrument_never_use_a_stale_copy(store):
    # Overlapping owners (a takeover while the old worker still answers): each decision reads the latest row.
    a = ComplianceGate(config(store, max_position=1.0, max_order_quantity=1.0))
    b = ComplianceGate(config(store, max_position=1.0, max_order_quantity=1.0))
    fills = [g.check("X", "BUY", 1.0, snap(at(10, 0, i))).quantity for i, g in enumerate([a, b] * 5)]
    assert sum(fills) == 1.0
    assert a.check("X", "CLOSE_LONG", 0.0, snap(at(10, 1))).quantity == 1.0
    assert b.position("X") == 0.0 and b.check("X", "BUY", 1.0, snap(at(10, 2))).quantity == 1.0


def test_luld_reference_band_and_limit_state_survive_a_restart(store):
    first = ComplianceGate(config(store))
    for i, price in enumerate([50.0, 50.8, 50.9, 51.0]):  # the 5-minute mean moves > 1%: a new reference
        first.observe("X", snap(at(10, 0, i), last=price))
    before = first.status("X", at(10, 0, 3))
    assert before.reference != 50.0
    first.observe("X", snap(at(10, 0, 4), last=51.0, bid=before.lower - 0.01, ask=before.lower))  # limit state
    assert first.status("X", at(10, 0, 4)).luld_state == "limit"
    first.close()

    gate = ComplianceGate(config(store))
    after = gate.status("X", at(10, 0, 4))
    assert (after.reference, after.lower, after.upper, after.luld_state) == (
        before.reference, before.lower, before.upper, "limit")
    paused = gate.check("X", "BUY", 1.0, snap(at(10, 0, 20), last=51.0))  # 16 s unresolved: a trading pause
    assert paused.reasons == ["luld_pause"] and not paused.allowed


def test_a_gate_reopened_before_every_step_decides_as_one_kept_in_memory(store):
    rng = random.Random(7)
    memory = ComplianceGate(config(None, max_position=3.0, max_order_quantity=2.0))
    ts, price, prior = at(9, 31), 20.0, 20.0
    for step in range(150):
        if step == 75:
            ts, prior = at(9, 31, day=NEXT), price
        ts += rng.randint(1, 40) * S
        price = max(0.5, round(price * (1 + rng.uniform(-0.04, 0.03)), 2))
        market = snap(ts, last=price, prior_close=prior, ssr_active=rng.random() < 0.02)
        action, quantity = rng.choice(["BUY", "SELL", "HOLD", "CLOSE_LONG", "CLOSE_SHORT"]), rng.uniform(0, 2)
        gate = ComplianceGate(config(store, max_position=3.0, max_order_quantity=2.0))
        assert gate.check("X", action, quantity, market) == memory.check("X", action, quantity, market), step
        assert gate.status("X", ts) == memory.status("X", ts)
        gate.close()


def test_the_callers_position_replaces_the_simulated_one(store):
    gate = ComplianceGate(config(store, max_position=1.0, max_order_quantity=1.0))
    assert gate.check("X", "BUY", 1.0, snap(at(10, 0))).quantity == 1.0  # simulated: now long 1
    assert gate.check("X", "BUY", 1.0, snap(at(10, 1))).reasons == ["risk_limit"]
    assert gate.check("X", "BUY", 1.0, snap(at(10, 2)), position=0.0).quantity == 1.0  # the caller says flat
    short = gate.check("X", "SELL", 1.0, snap(at(10, 3)), position=-1.0)  # the caller is already short 1
    assert short.reasons == ["risk_limit"] and not short.allowed
    gate.close()
    assert ComplianceGate(config(store)).position("X") == -1.0  # the caller's position is what was stored


@pytest.mark.parametrize("persisted", [False, True])
def test_the_feeds_ssr_indicator_restricts_short_sales_for_the_rest_of_the_day(store, persisted):
    def gate() -> ComplianceGate:
        return kept if not persisted else ComplianceGate(config(store))

    kept = ComplianceGate(config(None))
    assert gate().check("X", "SELL", 1.0, snap(at(10, 0), ssr_active=True)).reasons == ["ssr"]  # no trigger price
    assert gate().check("X", "CLOSE_LONG", 0.0, snap(at(10, 1), ssr_active=True), position=2.0).allowed
    assert gate().check("X", "SELL", 1.0, snap(at(15, 0))).reasons == ["ssr"]  # the indicator dropped: still today
    assert gate().check("X", "SELL", 1.0, snap(at(10, 0, day=NEXT))).allowed


@pytest.mark.parametrize("state, field", [
    ("not json", "not a BookState"),
    ('{"format_version": 99}', "state.format_version"),
    ("BAD_SSR", "$.ssr.active_from"),
])
def test_a_corrupted_row_is_an_error_naming_the_instrument_and_field(store, state, field):
    gate = ComplianceGate(config(store))
    gate.observe("AAPL", snap(at(10, 0)))
    gate.close()
    with sqlite3.connect(store) as db:
        if state == "BAD_SSR":
            row = db.execute("SELECT state FROM books WHERE instrument = 'AAPL'").fetchone()[0]
            state = row.replace('"active_from":0', '"active_from":"soon"')
            assert state != row
        db.execute("UPDATE books SET state = ? WHERE instrument = 'AAPL'", (state,))
    gate = ComplianceGate(config(store))
    with pytest.raises(DataError, match=r"instrument 'AAPL'.*") as e:
        gate.check("AAPL", "BUY", 1.0, snap(at(10, 1)))
    assert field in str(e.value)
    assert gate.check("MSFT", "BUY", 1.0, snap(at(10, 1))).allowed  # other instruments are unaffected


@pytest.mark.parametrize("kind", ["missing directory", "a directory", "not a database"])
def test_a_bad_state_path_is_a_configuration_error(tmp_path, kind):
    path = {"missing directory": tmp_path / "missing" / "state.sqlite", "a directory": tmp_path,
            "not a database": tmp_path / "junk.sqlite"}[kind]
    if kind == "not a database":
        path.write_bytes(b"this is not a database, " * 100)
    with pytest.raises(ConfigurationError, match="compliance.state_path"):
        ComplianceGate(config(path))


def test_a_decision_the_store_cannot_record_is_never_returned(store, monkeypatch):
    monkeypatch.setattr("dualhrq.compliance.journal.BUSY_TIMEOUT_MS", 50)
    gate = ComplianceGate(config(store, max_position=1.0, max_order_quantity=1.0))
    gate.observe("X", snap(at(10, 0)))
    holder = sqlite3.connect(store, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock past the busy timeout
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        gate.check("X", "BUY", 1.0, snap(at(10, 1)))
    holder.execute("COMMIT")
    holder.close()
    assert gate.position("X") == 0.0  # the BUY that could not be recorded did not count as filled
    assert gate.check("X", "BUY", 1.0, snap(at(10, 2))).quantity == 1.0


def test_without_a_state_path_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    gate = ComplianceGate(config(None))
    gate.check("X", "BUY", 1.0, snap(at(10, 0)))
    assert list(tmp_path.iterdir()) == []


_CHILD = """
import sys, time
from dualhrq.compliance.gate import ComplianceGate, MarketSnapshot
from dualhrq.compliance.sessions import wall_ns
from dualhrq.config import ComplianceConfig
from datetime import date, time as t
ts = wall_ns(date(2021, 3, 3), t(10, 0))
gate = ComplianceGate(ComplianceConfig(state_path=sys.argv[1]))
gate.observe("X", MarketSnapshot(ts, 45.0, 44.99, 45.01, 50.0, 1))
d = gate.check("X", "BUY", 1.0, MarketSnapshot(ts + 1, 45.0, 44.99, 45.01, 50.0, 1))
print(d.action, d.quantity, flush=True)
time.sleep(60)
"""


def test_state_written_before_a_decision_returns_survives_sigkill(store):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(store)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = child.stdout.readline()
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(10)
    assert line.split() == ["BUY", "1.0"] and child.returncode == -signal.SIGKILL
    gate = ComplianceGate(config(store, max_position=1.0))
    assert gate.position("X") == 1.0
    assert gate.status("X", at(10, 1)).ssr_active
    assert gate.check("X", "BUY", 1.0, snap(at(10, 1), last=45.0)).reasons == ["risk_limit"]


def test_the_journal_runs_in_wal_mode(store):
    StateJournal(store).close()
    with sqlite3.connect(store) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_the_kill_switch_is_held_by_a_gate_started_on_the_same_store_until_it_is_switched_off(store):
    first = ComplianceGate(config(store))
    assert not first.kill_switch  # a new store: off
    first.set_kill_switch(True)
    first.close()
    restarted = ComplianceGate(config(store))
    assert restarted.kill_switch
    assert restarted.check("X", "BUY", 1.0, snap(at(10, 0))).reasons == ["kill_switch"]
    restarted.set_kill_switch(False)
    restarted.close()
    assert not ComplianceGate(config(store)).kill_switch


def test_a_store_written_before_the_kill_switch_was_stored_opens_with_it_off(store):
    db = sqlite3.connect(store)
    db.execute("CREATE TABLE books (instrument TEXT PRIMARY KEY, version INTEGER NOT NULL, state TEXT NOT NULL)")
    db.commit()
    db.close()
    gate = ComplianceGate(config(store))
    assert not gate.kill_switch
    gate.set_kill_switch(True)
    assert StateJournal(store).kill_switch()


def test_a_kill_switch_the_store_cannot_take_errs_on_the_side_of_holding(store, monkeypatch):
    """The write fails (a full disk, a lock held too long): an "on" holds anyway, an "off" does not happen."""
    gate = ComplianceGate(config(store))

    def refuse(journal: StateJournal, on: bool) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(StateJournal, "set_kill_switch", refuse)
    with pytest.raises(sqlite3.OperationalError):
        gate.set_kill_switch(True)
    assert gate.kill_switch
    with pytest.raises(sqlite3.OperationalError):
        gate.set_kill_switch(False)
    assert gate.kill_switch
