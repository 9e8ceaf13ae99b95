"""`append` sessions: a stream that sends only its new bars is answered exactly as full windows are; a bar
missing, an unknown session or another instrument gets `resync_required`; streams are bounded and expire."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import msgspec
import numpy as np
import pytest
from runtime_fixtures import Cluster, ServerThread, eurusd_history, serving, tiny_bundle  # noqa: F401

from dualhrq.config import ComplianceConfig, SessionsConfig
from dualhrq.data.bars import Bars
from dualhrq.inputs.stream import Resync
from dualhrq.runtime import protocol as p
from dualhrq.runtime.client import Client, append_request, signal_request
from dualhrq.runtime.host import load_host
from dualhrq.runtime.signals import RequestWindows
from dualhrq.runtime.streams import Streams

# Retrieval never fails open here (a fail-open reply differs from the full window's for a reason of timing).
OVERLAY = {"serve": {"intra_op_threads": 1, "max_batch": 2}, "patterns": {"timeout_ms": 5000.0}}


@pytest.fixture(scope="module")
def served(tiny_bundle):
    with serving(tiny_bundle, OVERLAY) as st:
        yield st


def _numbers(r: p.SignalReply) -> tuple:
    return (r.action, r.probs, r.confidence, r.quantity, r.forecast, r.value, r.regime, r.patterns.used, r.act,
            r.compliance)


def _replay_both_ways(address: str, bars_n: int) -> tuple[int, int]:
    """Every bar of an EURUSD history (its last ``bars_n`` bars) as a full-window signal and as the next request
    of one stream; asserts the replies are the same. Returns (requests compared, resyncs)."""
    history = eurusd_history(bars=bars_n)
    with Client(address, timeout_s=30, retries=0) as client:
        pong = client.ping()
        windows = RequestWindows(history, pong.coarse_rule, (pong.needs.coarse, pong.needs.fine))
        stream = client.stream("EURUSD", "1h")
        compared = 0
        for i in range(len(history)):
            window = windows.at(i)
            if window is None:
                continue
            full = client.signal("EURUSD", "1h", *window)
            streamed = stream.signal(*window)
            assert _numbers(streamed) == _numbers(full), i
            compared += 1
    return compared, stream.resyncs


def test_a_stream_of_appends_is_answered_exactly_as_full_window_signals(served):
    compared, resyncs = _replay_both_ways(served.address, 1400)  # ~300 requests, weekends included
    assert compared > 250 and resyncs == 0


@pytest.mark.slow
def test_all_five_thousand_hourly_bars_as_one_stream_are_answered_exactly_as_full_windows(served):
    compared, resyncs = _replay_both_ways(served.address, 5000)  # the first ~1,000 are the first window's history
    assert compared >= 3900 and resyncs == 0


def _open(client: Client, windows: RequestWindows, i: int, session: str) -> None:
    client.request({**signal_request("EURUSD", "1h", *windows.at(i)), "session": session})


@contextmanager
def _opened(address: str, session: str, i: int = 1300) -> Iterator[tuple[Client, Bars, RequestWindows]]:
    """A client, an EURUSD history and the server's request windows of it, with `session` opened at bar i."""
    history = eurusd_history(end=-3, bars=1400)
    with Client(address, timeout_s=30, retries=0) as client:
        pong = client.ping()
        windows = RequestWindows(history, pong.coarse_rule, (pong.needs.coarse, pong.needs.fine))
        _open(client, windows, i, session)
        yield client, history, windows


def test_a_skipped_bar_gets_resync_required_and_the_stream_client_recovers_with_a_full_window(served):
    history = eurusd_history(end=-3, bars=1400)
    with Client(served.address, timeout_s=30, retries=0) as client:
        pong = client.ping()
        windows = RequestWindows(history, pong.coarse_rule, (pong.needs.coarse, pong.needs.fine))
        i = next(j for j in range(1150, 1300) if all(history.t[j + k + 1] - history.t[j + k] == 3600 * 10**9
                                                      for k in range(3)))  # three bars an hour apart
        _open(client, windows, i, "skip")
        skipped = append_request("EURUSD", "skip", history.slice(0, 0), history.slice(i + 2, i + 3))
        reply = client.exchange(skipped)[2]
        assert isinstance(reply, p.ErrorReply)
        assert (reply.code, reply.field) == ("resync_required", "session") and "missing" in reply.message

        stream = client.stream("EURUSD", "1h")
        stream.signal(*windows.at(i))
        got = stream.signal(*windows.at(i + 2))  # the client skipped a bar, as a lost message would
        # The client's window still holds bar i+1, so it sends both new bars: no resync needed.
        assert stream.resyncs == 0 and _numbers(got) == _numbers(client.signal("EURUSD", "1h", *windows.at(i + 2)))

        served.server._streams.clear()  # as a restart, an expiry or a move to another worker would
        got = stream.signal(*windows.at(i + 3))
        assert stream.resyncs == 1 and _numbers(got) == _numbers(client.signal("EURUSD", "1h", *windows.at(i + 3)))


def test_an_append_whose_deadline_passed_before_its_turn_is_refused_without_extending_its_stream(served):
    history = eurusd_history(end=-3, bars=1400)
    with Client(served.address, timeout_s=30, retries=0) as client:
        pong = client.ping()
        windows = RequestWindows(history, pong.coarse_rule, (pong.needs.coarse, pong.needs.fine))
        i = next(j for j in range(1150, 1300) if history.t[j + 1] - history.t[j] == 3600 * 10**9)
        _open(client, windows, i, "late")
        new = history.slice(i + 1, i + 2)
        late = append_request("EURUSD", "late", history.slice(0, 0), new, deadline_ms=1e-6)  # gone on arrival
        assert client.exchange(late)[2].code == "deadline_exceeded"
        # The bar is still new to the stream: sent again in time, it is answered as the full window is.
        reply = client.exchange(append_request("EURUSD", "late", history.slice(0, 0), new))[2]
        assert isinstance(reply, p.SignalReply)
        assert _numbers(reply) == _numbers(client.signal("EURUSD", "1h", *windows.at(i + 1)))


def test_an_append_one_bar_long_is_under_a_kilobyte_on_the_wire():
    history = eurusd_history(bars=2)
    body = append_request("EURUSD", "a" * 64, history.slice(0, 1), history.slice(1, 2), deadline_ms=5.0,
                          market={"ts": 1, "last": 1.1, "bid": 1.1, "ask": 1.1, "prior_close": 1.1, "luld_tier": 1,
                                  "position": 0.0})
    size = len(msgspec.msgpack.encode({**body, "id": "x" * 64}))
    assert size <= 1024, size


def test_an_unknown_session_another_instrument_or_a_bar_not_newer_get_resync_required(served):
    i = 1300
    with _opened(served.address, "known", i) as (client, history, windows):
        new = history.slice(i + 1, i + 2)
        for session, instrument, fine in (("never-opened", "EURUSD", new), ("known", "GBPUSD", new),
                                          ("known", "EURUSD", history.slice(i, i + 1))):
            reply = client.exchange(append_request(instrument, session, history.slice(0, 0), fine))[2]
            assert isinstance(reply, p.ErrorReply) and reply.code == "resync_required", (session, instrument)
            assert reply.field == "session"
        stats = client.admin("stats", token="t").detail
        assert stats["sessions"] >= 1 and stats["sessions_bytes"] > 0

        # A signal that restarts the session closes the old stream even when its own window is refused.
        bad = {**signal_request("EURUSD", "1h", *windows.at(i + 5)), "session": "known"}
        bad["fine"]["c"][-1] = -1.0
        assert client.exchange(bad)[2].code == "invalid_input"
        reply = client.exchange(append_request("EURUSD", "known", history.slice(0, 0), history.slice(i + 6, i + 7)))[2]
        assert isinstance(reply, p.ErrorReply) and reply.code == "resync_required"


def test_an_appended_coarse_bar_off_its_period_end_is_invalid_input_and_the_stream_goes_on(served):
    i = 1300
    with _opened(served.address, "grid", i) as (client, history, windows):
        bar = history.slice(i + 1, i + 2)  # an hourly bar sent as the day's coarse bar
        reply = client.exchange(append_request("EURUSD", "grid", Bars(*(c.copy() for c in bar.columns)), bar))[2]
        assert isinstance(reply, p.ErrorReply) and (reply.code, reply.field) == ("invalid_input", "coarse.t[0]")
        assert "1d period" in reply.message
        reply = client.exchange(append_request("EURUSD", "grid", history.slice(0, 0), bar))[2]
        assert isinstance(reply, p.SignalReply)


def test_a_stream_missing_a_closed_coarse_bar_is_refused_until_the_bar_comes(served):
    i = 1300
    with _opened(served.address, "late", i) as (client, history, windows):
        held_back, refused = [], 0
        for j in range(i + 1, i + 40):  # past the next close of a day: its coarse bar is held back
            coarse, fine = windows.new_at(j)
            held_back += [coarse] if len(coarse) else []
            reply = client.exchange(append_request("EURUSD", "late", history.slice(0, 0), fine))[2]
            if isinstance(reply, p.ErrorReply):
                assert (reply.code, reply.field) == ("invalid_input", "coarse.t") and "is missing" in reply.message
                refused += 1
                break
        assert held_back and refused == 1
        j += 1
        reply = client.exchange(append_request("EURUSD", "late", held_back[0], windows.new_at(j)[1]))[2]
        assert isinstance(reply, p.SignalReply)


def test_an_append_of_coarse_bars_not_closed_yet_is_refused_and_the_stream_holds_no_more(served):
    i = 1300
    with _opened(served.address, "early", i) as (client, history, windows):
        held = client.admin("stats", token="t").detail["sessions_bytes"]
        coarse, fine = windows.new_at(i + 1)
        day = 86_400 * 10**9
        last = int(windows.at(i)[0].t[-1])
        future = [last + k * day for k in range(1, 200)]  # period ends, each after the append's fine bar
        early = Bars(*(np.asarray(future, np.int64),
                       *(np.full(len(future), float(history.c[i])) for _ in "ohlc"), np.ones(len(future))))
        reply = client.exchange(append_request("EURUSD", "early", early, fine))[2]
        assert isinstance(reply, p.ErrorReply) and reply.code == "invalid_input"
        first_open = int(np.searchsorted(early.t, fine.t[-1], side="right"))
        assert reply.field == f"coarse.t[{first_open}]" and "has not closed" in reply.message
        assert client.admin("stats", token="t").detail["sessions_bytes"] == held  # nothing of it kept
        reply = client.exchange(append_request("EURUSD", "early", coarse, fine))[2]  # the stream is as it was
        assert isinstance(reply, p.SignalReply)


def test_streams_are_bounded_least_recently_used_first_and_expire_when_idle():
    now = [0.0]
    streams = Streams(SessionsConfig(max_streams=2, idle_s=10.0), clock=lambda: now[0])
    owner = object()
    for s in ("a", "b"):
        streams.open(s, "X", "1h", window=None, owner=owner)  # type: ignore[arg-type]
    now[0] = 5.0
    streams.get("a", "X", owner)  # "b" is now the least recently used
    streams.open("c", "X", "1h", window=None, owner=owner)  # type: ignore[arg-type]
    with pytest.raises(Resync):
        streams.get("b", "X", owner)
    assert len(streams) == 2
    now[0] = 14.0  # "a" was used at 5, "c" opened at 5: both idle for 9 s
    streams.get("c", "X", owner)
    now[0] = 15.5
    with pytest.raises(Resync, match="not open"):
        streams.get("a", "X", owner)
    assert len(streams) == 1
    with pytest.raises(Resync, match="reload"):
        streams.get("c", "X", object())


def test_a_stream_whose_worker_was_replaced_resyncs_by_itself_and_answers_as_the_full_window(tiny_bundle):
    history = eurusd_history(end=-3, bars=1300)
    cluster = Cluster(lambda path, hooks: load_host(tiny_bundle, OVERLAY, hooks), ComplianceConfig())
    try:
        with Client(cluster.addresses.frontend, timeout_s=30, retries=0) as client:
            pong = client.ping()
            windows = RequestWindows(history, pong.coarse_rule, (pong.needs.coarse, pong.needs.fine))
            stream = client.stream("EURUSD", "1h")
            for i in range(1200, 1205):
                stream.signal(*windows.at(i))
            owner = cluster.owner(client, signal_request("EURUSD", "1h", *windows.at(1205)))
            cluster.replace(owner)  # the stream's window was in that worker's memory
            got = stream.signal(*windows.at(1206))
            assert stream.resyncs == 1
            assert _numbers(got) == _numbers(client.signal("EURUSD", "1h", *windows.at(1206)))
            assert _numbers(stream.signal(*windows.at(1207))) == _numbers(client.signal("EURUSD", "1h",
                                                                                        *windows.at(1207)))
            assert stream.resyncs == 1
    finally:
        cluster.close()


def test_the_asyncio_client_streams_the_same_way(served):
    import asyncio

    from dualhrq.runtime.client import AsyncClient

    history = eurusd_history(end=-3, bars=1300)

    async def both():
        async with AsyncClient(served.address, timeout_s=30, retries=0) as client:
            pong = await client.ping()
            windows = RequestWindows(history, pong.coarse_rule, (pong.needs.coarse, pong.needs.fine))
            stream = client.stream("EURUSD", "1h")
            pairs = []
            for i in range(1250, 1262):
                pairs.append((await stream.signal(*windows.at(i)), await client.signal("EURUSD", "1h", *windows.at(i))))
            return pairs, stream.resyncs

    pairs, resyncs = asyncio.run(both())
    assert resyncs == 0 and all(_numbers(a) == _numbers(b) for a, b in pairs)


def test_a_loaded_host_has_run_an_append_so_the_first_live_bar_pays_no_compilation(tiny_bundle, monkeypatch):
    from dualhrq.inputs.stream import StreamWindow

    appended = []
    extend, sample = StreamWindow.extend, StreamWindow.sample
    monkeypatch.setattr(StreamWindow, "extend", lambda self, *a: appended.append("extend") or extend(self, *a))
    monkeypatch.setattr(StreamWindow, "sample", lambda self: appended.append("sample") or sample(self))
    load_host(tiny_bundle, OVERLAY).close()
    assert appended == ["extend", "sample"]
