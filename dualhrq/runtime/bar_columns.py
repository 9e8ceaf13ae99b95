"""A request's bars read from their MessagePack bytes straight into numpy columns, in one compiled pass.

A full window is some 700 numbers: decoded as lists they cost a Python object each, and then a numpy array per
column, about a hundred microseconds on the request path. Here the server keeps each `WireBars` map of a request
as raw bytes (msgspec.Raw) and reads it at once: the map `{t, o, h, l, c, v}`, six arrays of numbers of one
length, `t` integers. Anything else (another key, a missing or repeated one, a string, nil, a float in `t` or an
integer int64 cannot hold there, columns of other lengths) is left to msgspec's typed decode and the bars' own
check, which word the error; what this reader accepts, it reads as the typed decode does (an integer price is a
float)."""

from __future__ import annotations

import numpy as np
from numba import njit

KEYS = "tohlcv"  # the columns, in WireBars' order
_KEY_INDEX = np.full(256, -1, np.int64)  # a key's byte -> its column
for _i, _k in enumerate(KEYS):
    _KEY_INDEX[ord(_k)] = _i

Columns = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # t int64, o..v float64


def read_columns(raw: bytes | memoryview) -> Columns | None:
    """The six columns of one MessagePack-encoded `WireBars` map; None when it is not plain numbers of one
    length (the typed decode, then the bars' own check, say what is wrong)."""
    t, prices = _read(np.frombuffer(raw, np.uint8))
    if prices.shape[0] == 0:
        return None
    return t, prices[0], prices[1], prices[2], prices[3], prices[4]


# NOTE: one compiled call returning two arrays: each array handed back to Python costs about half a microsecond,
# and the helpers are inlined so that their (ok, value, offset) tuples cost nothing.


@njit(cache=True, nogil=True, inline="always")
def _be(buf: np.ndarray, at: int, size: int) -> np.uint64:
    """The big-endian unsigned integer of `size` bytes at `at` (the caller checked the bounds)."""
    x = np.uint64(0)
    for k in range(size):
        x = (x << np.uint64(8)) | np.uint64(buf[at + k])
    return x


@njit(cache=True, nogil=True, inline="always")
def _length(buf: np.ndarray, at: int, small_base: int, tag16: int) -> tuple[int, int]:
    """(length, offset after the header) of the map (small_base 0x80, tag16 0xDE) or array (0x90, 0xDC) header
    at `at`: small form small_base | n < 16, then 16- and 32-bit forms; length -1 for anything else."""
    if at >= len(buf):
        return -1, at
    b = np.int64(buf[at])
    if small_base <= b < small_base + 16:
        return b - small_base, at + 1
    if b == tag16 and at + 3 <= len(buf):
        return np.int64(_be(buf, at + 1, 2)), at + 3
    if b == tag16 + 1 and at + 5 <= len(buf):
        return np.int64(_be(buf, at + 1, 4)), at + 5
    return -1, at


@njit(cache=True, nogil=True, inline="always")
def _integer(buf: np.ndarray, at: int) -> tuple[bool, np.int64, int]:
    """(ok, value, next offset) of a MessagePack integer at `at` that int64 holds (the caller checked at < len)."""
    b = np.int64(buf[at])
    if b <= 0x7F:
        return True, b, at + 1
    if b >= 0xE0:
        return True, b - 256, at + 1
    if 0xCC <= b <= 0xD3:  # uint then int, 8 to 64 bits
        signed = b >= 0xD0
        size = np.int64(1) << (b - (0xD0 if signed else 0xCC))
        if at + 1 + size > len(buf):
            return False, np.int64(0), at
        x = _be(buf, at + 1, size)
        if not signed:
            if x > np.uint64(0x7FFFFFFFFFFFFFFF):
                return False, np.int64(0), at
            return True, np.int64(x), at + 1 + size
        if size < 8 and x >= np.uint64(1) << np.uint64(8 * size - 1):  # two's complement
            return True, np.int64(x) - (np.int64(1) << (8 * size)), at + 1 + size
        return True, np.int64(x), at + 1 + size
    return False, np.int64(0), at


@njit(cache=True, nogil=True)
def _read(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(t, prices [5, n]) of a `WireBars` map; prices of shape [0, 0] when it is not plain numbers of one length."""
    n_buf = len(buf)
    fail = (np.empty(0, np.int64), np.empty((0, 0)))
    word = np.empty(1, np.uint64)
    half = np.empty(1, np.uint32)
    f64, f32 = word.view(np.float64), half.view(np.float32)
    keys, at = _length(buf, 0, 0x80, 0xDE)
    if keys != 6:
        return fail
    n = -1
    t = np.empty(0, np.int64)
    prices = np.empty((0, 0))
    seen = 0
    for _ in range(6):
        if at + 2 > n_buf or buf[at] != 0xA1:  # a one-letter string
            return fail
        k = _KEY_INDEX[buf[at + 1]]  # a global array: a constant of the compiled code
        if k < 0 or seen >> k & 1:
            return fail
        seen |= 1 << k
        count, at = _length(buf, at + 2, 0x90, 0xDC)
        if count < 0 or count > n_buf - at or (n >= 0 and count != n):  # an element takes a byte at least
            return fail
        if n < 0:
            n = count
            t = np.empty(n, np.int64)
            prices = np.empty((5, n))
        if k == 0:
            for i in range(n):
                if at >= n_buf:
                    return fail
                ok, x, at = _integer(buf, at)
                if not ok:
                    return fail
                t[i] = x
            continue
        row = prices[k - 1]
        for i in range(n):
            if at >= n_buf:
                return fail
            b = buf[at]
            if b == 0xCB and at + 9 <= n_buf:
                word[0] = _be(buf, at + 1, 8)
                row[i] = f64[0]
                at += 9
            elif b == 0xCA and at + 5 <= n_buf:
                half[0] = np.uint32(_be(buf, at + 1, 4))
                row[i] = f32[0]
                at += 5
            elif b == 0xCF and at + 9 <= n_buf:  # beyond int64: still a number, as the typed decode reads it
                row[i] = float(_be(buf, at + 1, 8))
                at += 9
            else:
                ok, x, at = _integer(buf, at)
                if not ok:
                    return fail
                row[i] = float(x)
    if at != n_buf:
        return fail
    return t, prices
