"""Replay: bars and quotes through the gate with the independent checker, over a hand-built crash day (every
rule fires at a time computed by hand) and over real GOOG daily bars; reports, event files and the CLI."""

import importlib.util
import json
import sys
import types
from datetime import date, time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from subcommand import run_subcommand

from dualhrq.compliance import commands
from dualhrq.compliance.gate import ComplianceGate, GateDecision, implied_order
from dualhrq.compliance.policies import policy
from dualhrq.compliance.replay import QuoteEvent, Transition, load_quote_events, replay
from dualhrq.compliance.sessions import wall_ns
from dualhrq.data.bars import Bars
from dualhrq.data.resample import SECOND_NS
from dualhrq.errors import ConfigurationError, DataError

DAY = date(2021, 3, 3)
MIN = 60 * SECOND_NS


def et(hh: int, mm: int, ss: int = 0) -> int:
    return wall_ns(DAY, time(hh, mm, ss))


def crash_day() -> tuple[Bars, list[QuoteEvent]]:
    """1-minute bars 9:30-11:00 ET, prior close 100: flat at 100, then from 10:30 down 0.50 a minute to 88.

    Quotes: the offer sits on the lower band (95.00) from 10:00:10 for over 15 s (a pause from 10:00:25 to
    10:05:25), and at 10:15:50 the offer is 105.10, above the upper band 105.00.
    """
    n = 90
    t = et(9, 30) + MIN * np.arange(1, n + 1)  # close-stamped
    c = np.full(n, 100.0)
    c[60:] = np.maximum(100 - 0.5 * np.arange(1, n - 59), 88.0)
    o = np.concatenate([[100.0], c[:-1]])
    bars = Bars.from_columns({"t": t, "o": o, "h": np.maximum(o, c), "l": np.minimum(o, c), "c": c, "v": np.ones(n)})
    events = [QuoteEvent(et(10, 0, s), 94.99, 95.00, 100.0) for s in (10, 20, 26)]
    events.append(QuoteEvent(et(10, 15, 50), 104.90, 105.10, 100.0))
    return bars, events


def short_then_cover(i: int) -> tuple[str, float]:
    return ("SELL", 1.0) if i % 2 == 0 else ("CLOSE_SHORT", 0.0)


def test_crash_day_blocks_by_every_rule_with_zero_violations():
    bars, events = crash_day()
    report = replay(bars, short_then_cover, events, prior_close=100.0)
    assert report.violations == []
    assert report.decisions == 90 and report.warmup_bars == 0
    # pause 10:00:25-10:05:25 holds the SELLs closing at 10:01, 10:03, 10:05 (the covers have nothing to cover);
    # the cover closing 10:16 would buy at 105.10 > 105.00; so the next SELL would make the short 2 > 1;
    # 90.00 prints at 10:49:40 (bar 10:49-10:50: open 90.50, high, then low): the five later SELLs are shorts
    assert report.blocked == {"luld_pause": 3, "luld_band": 1, "risk_limit": 1, "ssr": 5}
    assert report.held == 10 and report.clipped == 0
    assert report.transitions == [
        Transition("luld", "limit", et(10, 0, 10)),
        Transition("luld", "paused", et(10, 0, 26)),  # first seen at the next quote after 10:00:25
        Transition("luld", "normal", et(10, 5, 40)),  # first print after 10:05:25
        Transition("ssr", "active", et(10, 49, 40)),
    ]


class LeakyGate(ComplianceGate):
    """A broken gate: it keeps its rule state fed but lets every implied order out unchanged."""

    leaked = 0.0  # the position its leaked orders build

    def check(self, instrument, action, quantity, market, position=None):  # noqa: ANN001, ANN201
        super().check(instrument, action, quantity, market, self.leaked)
        side, qty = implied_order(action, quantity, self.leaked)
        self.leaked += side * qty
        return GateDecision(action, qty, True, action, [])


def test_checker_catches_a_gate_that_lets_violations_through():
    bars, events = crash_day()
    report = replay(bars, short_then_cover, events, gate=LeakyGate(), prior_close=100.0)
    assert {rule for v in report.violations for rule in v.rules} == {"ssr", "luld_pause", "luld_band"}
    report = replay(bars, lambda i: ("SELL", 1.0), events, gate=LeakyGate(), prior_close=100.0)
    assert "risk_limit" in {rule for v in report.violations for rule in v.rules}


@pytest.fixture(scope="module")
def goog() -> Bars:
    """GOOG daily bars from 2012 on (the part under Rule 201), read from backtesting's bundled CSV without
    importing backtesting (slow to import); stamped at the 16:00 ET close like dualhrq.data.bars wants."""
    path = Path(importlib.util.find_spec("backtesting").origin).parent / "test" / "GOOG.csv"
    frame = pd.read_csv(path, index_col=0, parse_dates=True).loc["2012-01-01":]
    close_time = (frame.index.tz_localize("America/New_York") + pd.Timedelta(hours=16)).as_unit("ns")
    return Bars.from_columns({"t": close_time.asi8, "o": frame.Open.to_numpy(float), "h": frame.High.to_numpy(float),
                              "l": frame.Low.to_numpy(float), "c": frame.Close.to_numpy(float),
                              "v": frame.Volume.to_numpy(float)})


def test_goog_daily_momentum_replay_has_zero_violations_and_blocks_actions(goog):
    report = replay(goog, policy("momentum", goog), instrument="GOOG")
    assert report.violations == []
    assert report.warmup_bars == 1 and report.decisions == len(goog) - 1
    # 2012-10-18: GOOG traded 10.5% below the prior close; the restriction covers the 18th and the 19th
    days = [(tr.state, pd.Timestamp(tr.ts, tz="UTC").tz_convert("America/New_York").date()) for tr in report.transitions]
    assert days == [("active", date(2012, 10, 18)), ("inactive", date(2012, 10, 22))]
    assert report.blocked["ssr"] == 1  # momentum's SELL at the 19th's close would have been a short sale
    assert report.blocked["risk_limit"] > 0  # BUY after BUY at the 1.0 position limit


def test_goog_daily_random_replay_has_zero_violations(goog):
    report = replay(goog, policy("random", goog, seed=3), instrument="GOOG")
    assert report.violations == []
    assert report.held > 0


def test_reports_render_as_json_and_markdown():
    bars, events = crash_day()
    report = replay(bars, short_then_cover, events, prior_close=100.0, instrument="CRASH")
    data = json.loads(report.to_json())
    assert data["instrument"] == "CRASH" and data["violations"] == []
    assert data["transitions"][0] == {"rule": "luld", "state": "limit", "ts": et(10, 0, 10),
                                      "time": "2021-03-03T10:00:10-05:00"}
    md = report.to_markdown()
    assert "**Violations: 0**" in md and "| ssr | 5 |" in md and "| 2021-03-03T10:49:40-05:00 | ssr | active |" in md


def test_first_day_only_provides_the_prior_close_without_one_given():
    bars, events = crash_day()
    report = replay(bars, short_then_cover, events)
    assert (report.warmup_bars, report.decisions, report.skipped_events) == (90, 0, 4)


def test_replay_refuses_bad_input():
    bars, _ = crash_day()
    with pytest.raises(ConfigurationError, match="tier"):
        replay(bars, short_then_cover, tier=3)
    with pytest.raises(DataError, match="close"):
        replay({"t": [1, 2], "o": [1.0, 1.0], "h": [1.0, 1.0], "l": [1.0, 1.0], "c": [1.0, -1.0], "v": [0, 0]},
               short_then_cover)


def test_quote_events_load_from_csv_and_json(tmp_path):
    csv = tmp_path / "q.csv"
    csv.write_text(f"ts,bid,ask,last\n2021-03-03T10:00:00-05:00,99.8,100.2,100\n{et(10, 0, 1)},99.9,100.1,100\n")
    js = tmp_path / "q.json"
    js.write_text(json.dumps([{"ts": et(10, 0, 1), "bid": 99.9, "ask": 100.1, "last": 100.0}]))
    assert load_quote_events(csv) == [QuoteEvent(et(10, 0), 99.8, 100.2, 100.0),
                                      QuoteEvent(et(10, 0, 1), 99.9, 100.1, 100.0)]
    assert load_quote_events(js) == [QuoteEvent(et(10, 0, 1), 99.9, 100.1, 100.0)]


@pytest.mark.parametrize("body, message", [
    ("ts,bid,ask\n1,1,1\n", "missing last"),
    ("ts,bid,ask,last\n1,0,1,1\n", "row 0: bid"),
    ("ts,bid,ask,last\n1,1,x,1\n", "row 0: ask"),
    ("ts,bid,ask,last\n2021-03-03T10:00:00,1,1,1\n", "no UTC offset"),
    ("ts,bid,ask,last\n1,1,1,1\n1,95.01,94.99,95\n", "row 1: bid 95.01 is above ask 94.99: a crossed quote"),
    ("ts,bid,ask,last\n9223372036854775807,1,1,1\n", "row 0: ts: expected a time from 1900 to 2200"),
    ("ts,bid,ask,last\n", "no quote events"),
    ("", "empty file: no quote events"),
    (f"ts,bid,ask,last\n{et(10, 0)},1,1,1\n{et(10, 0)},1,1,1\n{et(9, 59)},1,1,1\n",
     r"row 2: ts 2021-03-03T09:59:00-05:00 is before row 1's 2021-03-03T10:00:00-05:00 \(times ET\): events must "
     "be in time order"),
])
def test_bad_quote_events_are_refused_naming_the_field(tmp_path, body, message):
    path = tmp_path / "q.csv"
    path.write_text(body)
    with pytest.raises(DataError, match=message):
        load_quote_events(path)


@pytest.mark.parametrize("body, message", [
    ('[{"ts": ', "not valid JSON: Expecting value at line 1 column 9"),
    (" \n", "empty file: no quote events"),
    ("[]", "no quote events"),
])
def test_a_json_events_file_broken_or_empty_is_refused_naming_the_file_and_position(tmp_path, body, message):
    path = tmp_path / "bad.json"
    path.write_text(body)
    with pytest.raises(DataError, match=f"{path}: {message}"):
        load_quote_events(path)


def _cli(*argv: str) -> int:
    return run_subcommand(commands.register, "replay", *argv)


@pytest.fixture
def crash_files(tmp_path):
    bars, events = crash_day()
    stamps = pd.to_datetime(bars.t - MIN, utc=True)  # the loader's default: stamped at the bar's open
    pd.DataFrame({"timestamp": stamps, "open": bars.o, "high": bars.h, "low": bars.l, "close": bars.c,
                  "volume": bars.v}).to_csv(tmp_path / "crash.csv", index=False)
    pd.DataFrame([{"ts": e.ts, "bid": e.bid, "ask": e.ask, "last": e.last} for e in events]).to_csv(
        tmp_path / "quotes.csv", index=False)
    return tmp_path


def test_cli_replays_a_file_with_a_builtin_policy(crash_files, capsys):
    d = crash_files
    rc = _cli("--data", str(d / "crash.csv"), "--policy", "momentum", "--events", str(d / "quotes.csv"),
              "--prior-close", "100", "--json", str(d / "r.json"), "--markdown", str(d / "r.md"))
    assert rc == 0
    out = capsys.readouterr().out
    assert "violations: 0" in out and "CRASH was gated as a US-listed stock" in out  # FX users must not assume
    assert json.loads((d / "r.json").read_text())["instrument"] == "CRASH"
    assert (d / "r.md").read_text().startswith("# Compliance replay: CRASH")


def test_cli_bundle_uses_the_runtime_signal_function(crash_files, monkeypatch):
    seen = {}

    def signal_fn_from_bundle(bundle_path, bars, instrument):  # noqa: ANN001, ANN202
        seen["bundle"], seen["bars"], seen["instrument"] = bundle_path, len(bars), instrument
        return short_then_cover

    monkeypatch.setitem(sys.modules, "dualhrq.runtime.signals",
                        types.SimpleNamespace(signal_fn_from_bundle=signal_fn_from_bundle))
    assert _cli("--data", str(crash_files / "crash.csv"), "--bundle", "B", "--prior-close", "100") == 0
    assert seen == {"bundle": "B", "bars": 90, "instrument": "CRASH"}  # the model decides as the bars' own


def test_cli_bundle_of_another_timeframe_names_bundle_and_data(crash_files, monkeypatch):
    def signal_fn_from_bundle(bundle_path, bars, instrument):  # noqa: ANN001, ANN202
        raise ConfigurationError("data.coarse_rule: '1d' is not longer than the fine bars")

    monkeypatch.setitem(sys.modules, "dualhrq.runtime.signals",
                        types.SimpleNamespace(signal_fn_from_bundle=signal_fn_from_bundle))
    with pytest.raises(ConfigurationError, match=r"--bundle B cannot produce signals for these --data bars.*'1d'"):
        _cli("--data", str(crash_files / "crash.csv"), "--bundle", "B")


def test_cli_refuses_events_that_all_fall_outside_what_the_replay_feeds(crash_files, capsys):
    """Without --prior-close the crash day only gives the prior close: every quote of it is skipped."""
    d = crash_files
    with pytest.raises(DataError, match=r"--events .*quotes.csv: all 4 quote events were skipped, none reached the "
                                        r"gate: .*--data's bars close from 2021-03-03T14:31:00 to 2021-03-03T16:00:00"):
        _cli("--data", str(d / "crash.csv"), "--policy", "momentum", "--events", str(d / "quotes.csv"),
             "--json", str(d / "r.json"))
    assert not (d / "r.json").exists()


def test_cli_warns_with_the_count_of_events_skipped(crash_files, capsys):
    d = crash_files
    with (d / "quotes.csv").open("a") as f:
        f.write(f"{et(12, 0)},99.9,100.1,100\n")  # after the last bar's close at 11:00
    assert _cli("--data", str(d / "crash.csv"), "--policy", "momentum", "--events", str(d / "quotes.csv"),
                "--prior-close", "100") == 0
    assert "warning: --events " in (out := capsys.readouterr().out) and "1 of 5 quote events skipped" in out
