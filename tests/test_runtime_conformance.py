"""Conformance with docs/PROTOCOL.md, spoken as a gateway in another language would: plain `msgpack` and raw
pyzmq REQ and DEALER sockets, no dualhrq structs. Every message type, every admin command, every error code."""

from __future__ import annotations

import math

import msgpack
import pytest
import zmq
from runtime_fixtures import (  # noqa: F401
    CountingEngine,
    ServerThread,
    eurusd_history,
    fake_host,
    real_signal_body,
    signal_body,
    tiny_bundle,
)

from dualhrq.config import ServeConfig
from dualhrq.runtime.host import load_host
from dualhrq.runtime.server import Server

TOKEN = "conformance-token"
MAX_BODY = 100_000
ACTIONS = ["BUY", "SELL", "HOLD", "CLOSE_LONG", "CLOSE_SHORT"]
STYLES = ["req", "dealer", "dealer+delimiter"]  # DEALER clients may or may not mimic REQ's empty frame


def talk(address: str, body: bytes, style: str, timeout_ms: int = 10_000) -> dict:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ if style == "req" else zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    try:
        sock.send_multipart([b"", body] if style == "dealer+delimiter" else [body])
        assert sock.poll(timeout_ms), "no reply"
        frames = sock.recv_multipart()
        assert frames[:-1] == ([b""] if style == "dealer+delimiter" else []), "envelope not echoed as sent"
        reply = msgpack.unpackb(frames[-1], raw=False)
        assert isinstance(reply, dict) and all(isinstance(k, str) for k in reply)
        return reply
    finally:
        sock.close()


def is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_error(reply: dict, rid, code: str, field="any") -> None:
    assert set(reply) == {"type", "id", "code", "message", "field"}
    assert reply["type"] == "error" and reply["id"] == rid and reply["code"] == code, reply
    assert isinstance(reply["message"], str) and reply["message"]
    assert reply["field"] is None or isinstance(reply["field"], str)
    if field != "any":
        assert reply["field"] == field, reply


def check_signal(reply: dict, rid: str) -> None:
    assert set(reply) == {"type", "id", "model", "action", "probs", "confidence", "quantity", "forecast", "value",
                          "regime", "patterns", "act", "compliance", "timing_us"}
    assert reply["type"] == "signal" and reply["id"] == rid and isinstance(reply["model"], str)
    assert reply["action"] in ACTIONS
    assert len(reply["probs"]) == 5 and all(is_num(x) for x in reply["probs"])
    assert abs(sum(reply["probs"]) - 1) < 1e-6
    assert all(is_num(reply[k]) for k in ("confidence", "quantity", "value"))
    assert set(reply["forecast"]) == {"coarse", "fine"} and all(is_num(v) for v in reply["forecast"].values())
    assert set(reply["regime"]) == {"id", "probs"} and isinstance(reply["regime"]["id"], int)
    assert all(is_num(x) for x in reply["regime"]["probs"])
    pat = reply["patterns"]
    assert set(pat) == {"used", "fail_open", "reason"} and isinstance(pat["used"], int)
    assert isinstance(pat["fail_open"], bool) and pat["reason"] in (None, "timeout", "disabled", "error", "empty")
    assert set(reply["act"]) == {"segments", "halted"} and reply["act"]["halted"] in ("q", "max")
    assert isinstance(reply["act"]["segments"], int) and reply["act"]["segments"] >= 1
    comp = reply["compliance"]
    assert set(comp) == {"allowed", "original_action", "reasons"} and isinstance(comp["allowed"], bool)
    assert comp["original_action"] in ACTIONS and all(isinstance(r, str) for r in comp["reasons"])
    assert set(reply["timing_us"]) == {"decode", "features", "retrieval", "queue", "engine", "total"}
    assert all(isinstance(v, int) and v >= 0 for v in reply["timing_us"].values())


@pytest.fixture(scope="module")
def real(tiny_bundle):
    serve = ServeConfig(bind="tcp://127.0.0.1:*", admin_tokens=[TOKEN], max_body_bytes=MAX_BODY,
                        drain_timeout_s=2.0)
    overlay = {"serve": {"intra_op_threads": 1, "max_batch": 2}}
    with ServerThread(Server(serve, lambda path, hooks: load_host(path, overlay, hooks), str(tiny_bundle))) as st:
        pong = talk(st.address, msgpack.packb({"type": "ping", "id": "n"}), "dealer")
        yield st.address, (pong["needs"]["coarse"], pong["needs"]["fine"]), str(tiny_bundle)


@pytest.mark.parametrize("style", STYLES)
def test_a_ping_gets_a_pong_with_exactly_the_documented_fields(real, style):
    address, needs, _ = real
    reply = talk(address, msgpack.packb({"type": "ping", "id": "p-1"}), style)
    assert set(reply) == {"type", "id", "model", "ready", "uptime_s", "needs", "rules_version", "workers",
                          "timeframe", "coarse_rule"}
    assert reply["workers"] == 1  # one process: itself
    assert (reply["timeframe"], reply["coarse_rule"]) == ("1h", "1d")  # the tiny bundle: EURUSD hourly
    assert reply["type"] == "pong" and reply["id"] == "p-1" and reply["ready"] is True
    assert is_num(reply["uptime_s"]) and set(reply["needs"]) == {"coarse", "fine"}
    assert (reply["needs"]["coarse"], reply["needs"]["fine"]) == needs
    assert isinstance(reply["rules_version"], str) and reply["rules_version"]


@pytest.mark.parametrize("style", STYLES)
def test_a_signal_gets_a_reply_with_exactly_the_documented_fields(real, style):
    address, needs, _ = real
    reply = talk(address, msgpack.packb(real_signal_body("s-1", needs)), style)
    check_signal(reply, "s-1")


def test_signal_with_market_and_deadline(real):
    address, needs, _ = real
    market = {"ts": 1_518_000_000_000_000_000, "last": 1.2, "bid": 1.1999, "ask": 1.2001, "prior_close": 1.21,
              "luld_tier": 2}
    reply = talk(address, msgpack.packb(real_signal_body("s-2", needs, deadline_ms=5000.0, market=market)), "dealer")
    check_signal(reply, "s-2")


@pytest.mark.parametrize("cmd", ["stats", "disable_patterns", "enable_patterns", "kill_switch_on", "kill_switch_off",
                                 "reload"])
def test_every_admin_command(real, cmd):
    address, _, bundle = real
    body = {"type": "admin", "id": f"a-{cmd}", "cmd": cmd, "token": TOKEN}
    if cmd == "reload":
        body["bundle"] = bundle
    reply = talk(address, msgpack.packb(body), "req", timeout_ms=60_000)
    assert set(reply) == {"type", "id", "cmd", "ok", "detail"}
    assert (reply["type"], reply["id"], reply["cmd"], reply["ok"]) == ("admin", f"a-{cmd}", cmd, True)
    assert isinstance(reply["detail"], dict)


def test_a_session_opened_by_a_signal_is_extended_by_appends_until_a_resync(real):
    address, needs, _ = real
    history = eurusd_history(end=-2, bars=2000)  # its last bar comes after the opening window's
    opening = real_signal_body("o-1", needs, history.slice(0, len(history) - 1), session="gw-7")
    check_signal(talk(address, msgpack.packb(opening), "dealer"), "o-1")
    last = {k: getattr(history, k)[-1:].tolist() for k in "tohlcv"}
    append = {"type": "append", "id": "a-1", "instrument": "EURUSD", "session": "gw-7", "fine": last,
              "coarse": {k: [] for k in "tohlcv"}}
    check_signal(talk(address, msgpack.packb(append), "req"), "a-1")
    check_error(talk(address, msgpack.packb({**append, "id": "a-2"}), "dealer"), "a-2", "resync_required", "session")
    check_error(talk(address, msgpack.packb({**append, "id": "a-3", "session": "nobody"}), "dealer"), "a-3",
                "resync_required", "session")


def _bad(needs):
    good = real_signal_body("e", needs)

    def with_fine(column, row, value):
        body = real_signal_body("e", needs)
        body["fine"][column][row] = value
        return msgpack.packb(body)

    return [
        ("not MessagePack", b"\xc1\xc1", None, "bad_request", None),
        ("not a map", msgpack.packb(["ping", "e"]), None, "bad_request", None),
        ("over the size limit", b"\x00" * (MAX_BODY + 1), None, "bad_request", None),
        ("wrong type", msgpack.packb({**good, "instrument": 7}), "e", "bad_request", "instrument"),
        ("unknown field", msgpack.packb({**good, "colour": "red"}), "e", "bad_request", "colour"),
        ("NaN", with_fine("c", 3, float("nan")), "e", "invalid_input", "fine.c[3]"),
        ("Inf", with_fine("v", 4, float("inf")), "e", "invalid_input", "fine.v[4]"),
        ("too few bars", msgpack.packb({**good, "fine": {k: v[:3] for k, v in good["fine"].items()}}), "e",
         "invalid_input", "fine"),
        ("timestamps not increasing", with_fine("t", 5, 0), "e", "invalid_input", "fine.t[5]"),
        ("non-positive price", with_fine("o", 6, 0.0), "e", "invalid_input", "fine.o[6]"),
        ("unsupported version", msgpack.packb({**good, "v": 2}), "e", "unsupported_version", "v"),
        ("unknown type", msgpack.packb({"type": "quote", "id": "e"}), "e", "unknown_type", "type"),
        ("no token", msgpack.packb({"type": "admin", "id": "e", "cmd": "stats"}), "e", "unauthorized", "token"),
        ("deadline passed", msgpack.packb({**good, "deadline_ms": 0.001}), "e", "deadline_exceeded", None),
    ]


@pytest.mark.parametrize("style", ["req", "dealer"])
def test_each_kind_of_bad_request_gets_its_documented_error_code_and_field(real, style):
    address, needs, _ = real
    for what, body, rid, code, field in _bad(needs):
        reply = talk(address, body, style)
        try:
            check_error(reply, rid, code, field)
        except AssertionError as e:
            raise AssertionError(f"{what}: {reply}") from e


def test_overloaded_and_internal(tiny_config):
    """The two codes a healthy tiny model never earns: a full queue, an engine that fails."""

    class Failing(CountingEngine):
        fail = False

        def run(self, feeds):
            if self.fail:
                raise RuntimeError("engine on fire")
            return super().run(feeds)

    failing = Failing()
    serve = ServeConfig(bind="tcp://127.0.0.1:*", drain_timeout_s=1.0)
    slow = Server(serve, lambda path, hooks: fake_host(tiny_config, hooks, engine=CountingEngine(delay_s=0.05),
                                                       max_batch=1, queue_max=1), "b")
    with ServerThread(slow) as st:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(st.address)
        for i in range(8):
            sock.send(msgpack.packb(signal_body(f"o{i}")))
        replies = []
        while len(replies) < 8 and sock.poll(5000):
            replies.append(msgpack.unpackb(sock.recv(), raw=False))
        sock.close()
    assert len(replies) == 8
    overloaded = [r for r in replies if r["type"] == "error"]
    assert overloaded and all(check_error(r, r["id"], "overloaded") is None for r in overloaded)

    broken = Server(serve, lambda path, hooks: fake_host(tiny_config, hooks, engine=failing), "b")
    with ServerThread(broken) as st:
        failing.fail = True
        check_error(talk(st.address, msgpack.packb(signal_body("boom")), "dealer"), "boom", "internal", None)


def test_bars_whose_numbers_give_non_finite_features_are_invalid_input_not_internal(real):
    address, needs, _ = real
    body = real_signal_body("tiny-prices", needs)
    for k in "ohlc":  # finite, > 0 and bracketed, but each a few subnormals: the features' ratios are 0/0
        body["fine"][k] = [5e-324] * len(body["fine"]["t"])
    check_error(talk(address, msgpack.packb(body), "dealer"), "tiny-prices", "invalid_input", "fine")
    check_signal(talk(address, msgpack.packb(real_signal_body("after", needs)), "dealer"), "after")

