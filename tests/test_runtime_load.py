"""Under load: exactly one reply per request, matched by id, and an event loop that never stalls."""

from __future__ import annotations

import asyncio

import msgpack
import numpy as np
import pytest
from runtime_fixtures import CountingEngine, ServerThread, fake_host, hammer, in_process, signal_body

from dualhrq.config import ServeConfig
from dualhrq.runtime.server import Server

N, IN_FLIGHT = 2000, 64


def malformed(i: int, rid: str) -> tuple[bytes, str | None, str]:
    """(body, the id the reply must carry, the error code it must carry), five kinds in turn."""
    good = signal_body(rid)
    kind = (i // 5) % 5
    if kind == 0:
        return b"\x93\xc1garbage" + bytes([i % 256]), None, "bad_request"  # not MessagePack
    if kind == 1:
        return msgpack.packb({**good, "surprise": True}), rid, "bad_request"  # unknown field
    if kind == 2:
        good["fine"]["c"][-1] = float("nan")
        return msgpack.packb(good), rid, "invalid_input"  # NaN
    if kind == 3:
        return msgpack.packb({**good, "instrument": 42}), rid, "bad_request"  # wrong type
    return msgpack.packb({**good, "v": 9}), rid, "unsupported_version"


async def ticker(lags: list[float], period_s: float = 0.001) -> None:
    """How late the loop wakes a 1 ms sleeper: anything blocking the loop shows up here."""
    loop = asyncio.get_running_loop()
    while True:
        t = loop.time()
        await asyncio.sleep(period_s)
        lags.append(loop.time() - t - period_s)


def requests(n: int) -> list[tuple[bytes, str | None, str]]:
    """n requests, every fifth malformed (five kinds in turn), as (body, reply id, reply type or code)."""
    template = msgpack.packb(signal_body("template"))
    out = []
    for i in range(n):
        rid = f"r{i:07d}"
        if i % 5 == 4:
            out.append(malformed(i, rid))
        else:
            out.append((template.replace(b"template", rid.encode()), rid, "signal"))
    return out


@pytest.mark.parametrize("n", [400, pytest.param(N, marks=pytest.mark.slow)])
def test_requests_64_in_flight_a_fifth_malformed_each_get_exactly_one_matching_reply(tiny_config, n):
    """2,000 requests (slow: ~10 s on this shared CPU); 400 by default, through the same code."""
    lags: list[float] = []
    serve = ServeConfig(bind="tcp://127.0.0.1:*", max_batch=16, queue_max=256)
    # Each batch holds the engine 5 ms: were the loop ever to run it, the ticker would see 5 ms lags throughout.
    server = Server(serve, lambda path, hooks: fake_host(tiny_config, hooks, engine=CountingEngine(delay_s=0.005),
                                                         max_batch=16), "b")
    with ServerThread(server, ticker(lags)) as st:
        # The client runs in its own process, so the loop's lag is the server's, not a shared GIL's.
        result = in_process(hammer, st.address, requests(n), IN_FLIGHT)
    assert result["received"] == n
    assert not result["unanswered"] and not result["duplicates"] and not result["mismatched"]
    assert result["anonymous"] == (n // 25, n // 25)  # the undecodable ones: a null id, one reply each
    assert not result["extra"]
    lag_ms = np.array(lags) * 1e3
    # Generous bounds for a 2-core machine shared by several test runs.
    assert np.median(lag_ms) < 2.0, f"median loop lag {np.median(lag_ms):.2f} ms"
    assert np.percentile(lag_ms, 99) < 100.0, f"p99 loop lag {np.percentile(lag_ms, 99):.2f} ms"
