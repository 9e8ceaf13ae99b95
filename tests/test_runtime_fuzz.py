"""Fuzzing the live server: whatever the body, exactly one well-formed reply, and never `internal`."""

from __future__ import annotations

import copy

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runtime_fixtures import ServerThread, fake_host, signal_body

from dualhrq.config import ServeConfig, load_config
from dualhrq.runtime import protocol as p
from dualhrq.runtime.server import Server

FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DECODER_FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAX_BODY = 20_000


@pytest.fixture(scope="module")
def dealer():
    cfg = load_config("config/hrm_tiny.yaml")
    serve = ServeConfig(bind="tcp://127.0.0.1:*", max_body_bytes=MAX_BODY, admin_tokens=["tok"])
    with ServerThread(Server(serve, lambda path, hooks: fake_host(cfg, hooks), "b")) as srv:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(srv.address)
        yield sock
        sock.close()
        ctx.term()


def exchange(sock: zmq.Socket, body: bytes) -> p.Reply:
    sock.send(body)
    assert sock.poll(10_000), "no reply"
    reply = p.decode_reply(sock.recv())  # a well-formed reply of the protocol, whatever was sent
    assert not sock.poll(2), "more than one reply"  # the load test checks this at length
    assert not (isinstance(reply, p.ErrorReply) and reply.code == "internal"), reply
    return reply


scalars = st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=20) \
    | st.binary(max_size=20)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=5), max_leaves=8)
keys = st.sampled_from(["type", "id", "v", "instrument", "timeframe", "coarse", "fine", "deadline_ms", "market",
                        "cmd", "token", "bundle"]) | st.text(max_size=10)


def decodes_or_refuses(body: bytes) -> None:
    """The decoder's whole contract: a request, or ProtocolError with a protocol code; nothing else escapes."""
    try:
        p.decode_request(body, MAX_BODY)
    except p.ProtocolError as e:
        assert e.code in ("bad_request", "invalid_input", "unsupported_version", "unknown_type")
        assert e.request_id is None or isinstance(e.request_id, str)


@DECODER_FUZZ
@given(st.binary(max_size=3000))
def test_the_decoder_on_random_bytes(body):
    decodes_or_refuses(body)


@FUZZ
@given(st.dictionaries(keys, values, max_size=8))
def test_the_decoder_on_random_maps(body):
    decodes_or_refuses(msgpack.packb(body))


@FUZZ
@given(st.binary(max_size=3000))
def test_any_bytes_get_exactly_one_protocol_reply_and_never_internal(dealer, body):
    exchange(dealer, body)


@FUZZ
@given(st.dictionaries(keys, values, max_size=8))
def test_any_map_gets_exactly_one_protocol_reply_and_never_internal(dealer, body):
    exchange(dealer, msgpack.packb(body))


VALID = signal_body("fuzz")


def _mutate(req: dict, path: list, value) -> dict:
    out = copy.deepcopy(req)
    node = out
    for k in path[:-1]:
        node = node[k]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


_DELETE = object()
paths = st.sampled_from([["type"], ["id"], ["v"], ["instrument"], ["timeframe"], ["coarse"], ["fine"],
                         ["fine", "t"], ["fine", "c"], ["coarse", "v"], ["fine", "t", 3], ["fine", "c", 5],
                         ["coarse", "o", 0], ["fine", "h", 11]])


@FUZZ
@given(paths, values | st.just(_DELETE))
def test_mutated_valid_requests(dealer, path, value):
    reply = exchange(dealer, msgpack.packb(_mutate(VALID, path, value)))
    if path[0] != "id":  # the id survived the mutation, so the reply must carry it
        assert reply.id == "fuzz"


@FUZZ
@given(st.data())
def test_flipped_bytes_of_a_valid_request(dealer, data):
    body = bytearray(msgpack.packb(VALID))
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(body) - 1))
        body[i] = data.draw(st.integers(0, 255))
    exchange(dealer, bytes(body))


def test_the_server_still_serves_after_the_fuzz(dealer):
    reply = exchange(dealer, msgpack.packb(signal_body("after")))
    assert isinstance(reply, p.SignalReply) and reply.id == "after"
