"""Protocol v1 decoding: every malformed body earns the documented code, the offending field and the id."""

from __future__ import annotations

import math

import msgpack
import pytest

from dualhrq.runtime.protocol import Admin, Ping, ProtocolError, Signal, check_bars, decode_request

MAX = 100_000


def bars(n: int, start: int = 1_700_000_000_000_000_000, step: int = 3_600_000_000_000) -> dict:
    return {"t": [start + i * step for i in range(n)], "o": [100.0 + i for i in range(n)],
            "h": [101.0 + i for i in range(n)], "l": [99.0 + i for i in range(n)], "c": [100.5 + i for i in range(n)],
            "v": [1000.0] * n}


def signal(**over) -> dict:
    req = {"type": "signal", "id": "r1", "v": 1, "instrument": "EURUSD", "timeframe": "1h",
           "coarse": bars(25, step=86_400_000_000_000), "fine": bars(60)}
    req.update(over)
    return req


def error_of(body: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as e:
        decode_request(body, MAX)
    return e.value


def test_valid_requests_decode_to_their_types():
    assert isinstance(decode_request(msgpack.packb({"type": "ping", "id": "p"}), MAX), Ping)
    req = decode_request(msgpack.packb(signal(deadline_ms=5, market={
        "ts": 1, "last": 10.0, "bid": 9.9, "ask": 10.1, "prior_close": 10.0, "luld_tier": 1})), MAX)
    assert isinstance(req, Signal) and req.deadline_ms == 5.0 and req.market.luld_tier == 1
    assert (req.market.position, req.market.ssr_active) == (None, False)  # the v1 additions are optional
    req = decode_request(msgpack.packb(signal(market={
        "ts": 1, "last": 10.0, "bid": 9.9, "ask": 10.1, "prior_close": 10.0, "luld_tier": 2, "position": -3,
        "ssr_active": True})), MAX)
    assert (req.market.position, req.market.ssr_active) == (-3.0, True)
    admin = decode_request(msgpack.packb({"type": "admin", "id": "a", "cmd": "stats", "token": "t"}), MAX)
    assert isinstance(admin, Admin) and admin.cmd == "stats"


@pytest.mark.parametrize("body, field", [
    (b"\xc1\x00garbage", None),  # not MessagePack
    (msgpack.packb([1, 2, 3]), None),  # not a map
    (msgpack.packb({"type": "ping", "id": "a"}) + b"\x00", None),  # trailing bytes
    (msgpack.packb({1: "ping"}), None),  # keys not strings
    (msgpack.packb({"type": "ping"}), "id"),  # no id
    (msgpack.packb({"type": "ping", "id": 7}), "id"),  # id of the wrong type
    (msgpack.packb({"type": "ping", "id": "x" * 65}), "id"),  # id too long
])
def test_bodies_without_a_readable_id_get_bad_request_with_a_null_id(body, field):
    err = error_of(body)
    assert (err.code, err.request_id, err.field) == ("bad_request", None, field)


@pytest.mark.parametrize("over, field", [
    ({"instrument": 5}, "instrument"),
    ({"instrument": ""}, "instrument"),
    ({"fine": "bars"}, "fine"),
    ({"fine": {**bars(60), "c": "x"}}, "fine.c"),
    ({"fine": {**bars(60), "t": [1.5] + bars(60)["t"][1:]}}, "fine.t[0]"),
    ({"coarse": {**bars(25), "v": [1.0] * 24 + ["heavy"]}}, "coarse.v[24]"),
    ({"extra": 1}, "extra"),
    ({"fine": {**bars(60), "x": []}}, "fine.x"),
    ({"market": {"ts": 1, "last": 1.0, "bid": 1.0, "ask": 1.0, "prior_close": 1.0, "luld_tier": 3}},
     "market.luld_tier"),
    ({"deadline_ms": "soon"}, "deadline_ms"),
    ({"v": "1"}, "v"),
])
def test_schema_violations_are_bad_request_naming_the_field_and_keeping_the_id(over, field):
    err = error_of(msgpack.packb(signal(**over)))
    assert (err.code, err.field, err.request_id) == ("bad_request", field, "r1")


def test_a_missing_required_field_is_named():
    req = signal()
    del req["fine"]
    err = error_of(msgpack.packb(req))
    assert (err.code, err.field) == ("bad_request", "fine")


def test_unknown_type_names_the_type_field():
    err = error_of(msgpack.packb({"type": "subscribe", "id": "q"}))
    assert (err.code, err.field, err.request_id) == ("unknown_type", "type", "q")


@pytest.mark.parametrize("body", [signal(v=2), {**signal(v=2), "new_v2_field": 1}])
def test_another_protocol_version_is_unsupported_version(body):
    err = error_of(msgpack.packb(body))
    assert (err.code, err.field, err.request_id) == ("unsupported_version", "v", "r1")


@pytest.mark.parametrize("over, field", [
    ({"deadline_ms": math.nan}, "deadline_ms"),
    ({"deadline_ms": -1.0}, "deadline_ms"),
    ({"market": {"ts": 1, "last": 1.0, "bid": math.inf, "ask": 1.0, "prior_close": 1.0, "luld_tier": 1}},
     "market.bid"),
    ({"market": {"ts": 1, "last": 0.0, "bid": 1.0, "ask": 1.0, "prior_close": 1.0, "luld_tier": 2}},
     "market.last"),
    ({"market": {"ts": 1, "last": 1.0, "bid": 1.0, "ask": 1.0, "prior_close": 1.0, "luld_tier": 2,
                 "position": math.nan}}, "market.position"),
    ({"market": {"ts": 1, "last": 1.0, "bid": 1.0, "ask": 1.0, "prior_close": 1.0, "luld_tier": 2,
                 "position": 1e300}}, "market.position"),
    ({"market": {"ts": 1, "last": 1.0, "bid": 1.02, "ask": 1.01, "prior_close": 1.0, "luld_tier": 1}},
     "market.bid"),  # a crossed quote
    ({"market": {"ts": 2**63 - 1, "last": 1.0, "bid": 1.0, "ask": 1.0, "prior_close": 1.0, "luld_tier": 1}},
     "market.ts"),
])
def test_unusable_numbers_are_invalid_input(over, field):
    err = error_of(msgpack.packb(signal(**over)))
    assert (err.code, err.field) == ("invalid_input", field)


def test_a_body_over_the_size_limit_is_refused_without_decoding():
    body = msgpack.packb(signal())
    with pytest.raises(ProtocolError) as e:
        decode_request(body, len(body) - 1)
    assert (e.value.code, e.value.request_id) == ("bad_request", None)
    assert "exceeds" in e.value.message


def test_admin_with_an_unknown_command_is_bad_request():
    err = error_of(msgpack.packb({"type": "admin", "id": "a", "cmd": "format_disk", "token": "t"}))
    assert (err.code, err.field) == ("bad_request", "cmd")


def bars_error(wire: dict, minimum: int = 10) -> ProtocolError:
    req = decode_request(msgpack.packb(signal(fine=wire)), MAX)
    with pytest.raises(ProtocolError) as e:
        check_bars(req.fine, "fine", minimum, req.id)
    assert (e.value.code, e.value.request_id) == ("invalid_input", "r1")
    return e.value


@pytest.mark.parametrize("times, row", [([2**63 - 1], 0), ([-(2**63)], 0), ([2**64 - 1], 0),
                                        ([10**18, 2**64 - 1], 1), ([-(2**62), 10**18], 0)])
def test_a_bar_time_outside_1900_to_2200_is_named(times, row):
    n = len(times)
    wire = {"t": times, "o": [1.0] * n, "h": [1.0] * n, "l": [1.0] * n, "c": [1.0] * n, "v": [0.0] * n}
    err = bars_error(wire, minimum=1)
    assert err.field == f"fine.t[{row}]" and "1900 to 2200" in err.message


def test_clean_bars_become_numpy_columns():
    req = decode_request(msgpack.packb(signal()), MAX)
    fine = check_bars(req.fine, "fine", 60, req.id)
    assert len(fine) == 60 and fine.t.dtype.kind == "i" and fine.c.dtype.kind == "f"


def test_too_few_bars_names_the_timeframe():
    assert bars_error(bars(9)).field == "fine"


@pytest.mark.parametrize("column, row, value, field", [
    ("t", 5, 0, "fine.t[5]"),  # timestamps not increasing
    ("c", 7, -1.0, "fine.c[7]"),  # non-positive price
    ("o", 3, 0.0, "fine.o[3]"),
    ("c", 2, math.nan, "fine.c[2]"),
    ("v", 4, math.inf, "fine.v[4]"),
])
def test_bad_bar_values_name_column_and_row(column, row, value, field):
    wire = bars(20)
    wire[column][row] = value
    assert bars_error(wire).field == field


def test_columns_of_different_lengths_are_invalid_input():
    wire = bars(20)
    wire["v"] = wire["v"][:-1]
    assert bars_error(wire).field == "fine"


@pytest.mark.parametrize("body, field", [
    (b"\x83\xa4type\xa4ping\xa2id\x05\xa2id\xa4good", "id"),  # id 5, then "good"
    (b"\x85\xa4type\xa4ping\xa2id\xa1a\xa4type\xa5admin\xa3cmd\xa5stats\xa5token\xa0", "type"),
])
def test_a_repeated_key_that_only_its_last_value_makes_valid_is_bad_request_naming_it(body, field):
    err = error_of(body)
    assert (err.code, err.field) == ("bad_request", field) and "more than once" in err.message


def test_bars_that_are_no_valid_messagepack_inside_are_bad_request_naming_them():
    good = msgpack.packb(signal(fine={"x": 1}))
    body = good.replace(msgpack.packb({"x": 1}), b"\x81\xa2\xff\xfe\x01")  # a key of invalid UTF-8
    err = error_of(body)
    assert (err.code, err.field, err.request_id) == ("bad_request", "fine", "r1")
