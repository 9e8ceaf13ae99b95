"""The server reads a request's bars from their MessagePack bytes in one compiled pass: exactly the bodies msgspec's
typed decode accepts as `WireBars` of one length, read to the same numbers; every other body is left to it."""

from __future__ import annotations

import math
import random

import msgpack
import msgspec
import numpy as np
import pytest

from dualhrq.runtime.bar_columns import read_columns
from dualhrq.runtime.protocol import WireBars

INTS = [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, -1, -32, -33, -128, -129, -2**15 - 1,
        -2**31 - 1, -2**63, 1_700_000_000_000_000_000]
NUMBERS = [0.0, 1.5, -2.25, math.nan, math.inf, -math.inf, 1e300, 5e-324, 3, -7, 2**64 - 1, 2**63, 2**31]
BREAKS = [  # what makes a map of n >= 1 bars something else than WireBars of one length
    lambda d, i: d["t"].__setitem__(i, 1.0),  # a float time
    lambda d, i: d["t"].__setitem__(i, 2**64 - 1),  # beyond int64
    lambda d, i: d["t"].__setitem__(i, 2**63),
    lambda d, i: d["c"].__setitem__(i, "x"),
    lambda d, i: d["o"].__setitem__(i, None),
    lambda d, i: d["h"].__setitem__(i, True),
    lambda d, i: d["v"].__setitem__(i, [1.0]),
    lambda d, i: d.update(x=[]),
    lambda d, i: d.pop("v"),
    lambda d, i: d["l"].append(1.0),  # another length
]


def typed(raw: bytes) -> tuple[np.ndarray, ...] | None:
    """The typed decode's columns, where it reads six of one length that int64 and float64 hold; else None."""
    try:
        wire = msgspec.msgpack.decode(raw, type=WireBars)
        if len({len(getattr(wire, k)) for k in "tohlcv"}) > 1:
            return None
        return (np.asarray(wire.t, np.int64), *(np.asarray(getattr(wire, k), np.float64) for k in "ohlcv"))
    except (msgspec.ValidationError, OverflowError):
        return None


def random_map(rng: random.Random) -> dict:
    n = rng.choice([0, 1, 2, 5, 17, 70])
    d = {"t": [rng.choice(INTS) for _ in range(n)], **{k: [rng.choice(NUMBERS) for _ in range(n)] for k in "ohlcv"}}
    if n and rng.random() < 0.4:
        rng.choice(BREAKS)(d, rng.randrange(n))
    items = list(d.items())
    rng.shuffle(items)  # any key order
    return dict(items)


def encodings(d: dict) -> list[bytes]:
    """The map as msgspec and msgpack write it, floats as float64 and (where they fit) float32."""
    out = [msgspec.msgpack.encode(d), msgpack.packb(d)]
    try:
        out.append(msgpack.packb(d, use_single_float=True))
    except OverflowError:
        pass
    return out


def test_the_reader_accepts_and_reads_exactly_what_the_typed_decode_does():
    rng = random.Random(0)
    read = 0
    for _ in range(1500):
        for raw in encodings(random_map(rng)):
            want, got = typed(raw), read_columns(raw)
            assert (got is None) == (want is None), raw
            if want is not None:
                read += 1
                for a, b in zip(got, want, strict=True):
                    assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
    assert read > 1500  # most maps were plain numbers


@pytest.mark.parametrize("n", [16, 70_000])  # the 16- and 32-bit forms of the array header
def test_long_columns_are_read(n):
    d = {"t": list(range(n)), **{k: [float(i) for i in range(n)] for k in "ohlcv"}}
    t, *prices = read_columns(msgspec.msgpack.encode(d))
    assert np.array_equal(t, np.arange(n)) and all(np.array_equal(p, np.arange(n, dtype=float)) for p in prices)


def test_a_truncated_or_extended_map_is_left_to_the_typed_decode():
    raw = msgspec.msgpack.encode({k: [1, 2] if k == "t" else [1.0, 2.0] for k in "tohlcv"})
    assert read_columns(raw) is not None
    assert all(read_columns(raw[:i]) is None for i in range(len(raw)))
    assert read_columns(raw + b"\x00") is None


def test_a_repeated_key_is_left_to_the_typed_decode():
    body = b"".join(b"\xa1" + k.encode() + b"\x91\x01" for k in "tohlct")  # six keys, `t` twice, no `v`
    assert read_columns(b"\x86" + body) is None
