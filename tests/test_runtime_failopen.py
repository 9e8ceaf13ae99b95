"""Fail-open through the server: a slow, failing or disabled pattern index never holds a signal back."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from runtime_fixtures import CountingEngine, ServerThread, fake_host, signal_body

from dualhrq.config import PatternsConfig, ServeConfig
from dualhrq.patterns.encoder import PatternEncoder
from dualhrq.patterns.library import PatternLibrary
from dualhrq.patterns.retriever import Retriever
from dualhrq.runtime import protocol as p
from dualhrq.runtime.client import AsyncClient, Client
from dualhrq.runtime.server import Server

TOKEN = "t0k"
TIMEOUT_MS = 30.0  # generous: this machine's 2 cores are shared
PATTERNS = PatternsConfig(m=8, ef_construction=32, ef=16, max_elements=1000, embed_dim=2, timeout_ms=TIMEOUT_MS,
                          pool_size=2)


def make_retriever() -> Retriever:
    feats = np.random.default_rng(0).normal(size=(300, 5))  # FakeFeatures' 5 pattern features
    encoder = PatternEncoder(2).fit(feats)
    library = PatternLibrary(2, PATTERNS, outcome_scale=0.01)
    t = np.arange(200, dtype=np.int64)
    library.add(encoder.encode(feats[:200]), instrument="X", window_start=t, window_end=t, available_at=t,
                outcome=0.01, regime=0)
    return Retriever(library, encoder, PATTERNS, pattern_dim=8, k=2)


@pytest.fixture
def served(tiny_config):
    retriever = make_retriever()
    serve = ServeConfig(bind="tcp://127.0.0.1:*", admin_tokens=[TOKEN], drain_timeout_s=2.0)
    server = Server(serve, lambda path, hooks: fake_host(tiny_config, hooks, retriever=retriever, patterns=PATTERNS,
                                                         engine=CountingEngine(delay_s=0.002)), "b")
    with ServerThread(server) as st:
        yield st, retriever


def test_a_healthy_index_conditions_the_signal(served):
    st, _ = served
    with Client(st.address) as c:
        reply = c.request(signal_body())
    assert reply.patterns == p.Patterns(used=2, fail_open=False, reason=None)
    assert reply.forecast.fine == 2.0  # the CountingEngine echoes the mask's sum: the context reached it


def test_a_slow_index_fails_open_within_the_retrieval_timeout(served):
    st, retriever = served
    retriever.set_fault(delay_ms=300, error_rate=0)  # the drill: every query takes 10x the timeout

    async def load(address):
        async with AsyncClient(address, timeout_s=10, retries=0) as c:
            async def one():
                start = time.perf_counter()
                reply = await c.request(signal_body())
                return reply, time.perf_counter() - start
            return await asyncio.gather(*(one() for _ in range(40)))

    results = asyncio.run(load(st.address))
    replies = [r for r, _ in results]
    assert all(r.patterns.fail_open and r.patterns.reason == "timeout" for r in replies)
    # The guarantee is about a deadline: the retrieval stage never exceeds its timeout (+ generous slack on
    # a shared 2-core machine); the time is then engine + queue + the timeout, not the index's 300 ms.
    retrieval_ms = np.array([r.timing_us.retrieval for r in replies]) / 1e3
    assert np.percentile(retrieval_ms, 95) < TIMEOUT_MS + 20
    assert retrieval_ms.max() < 300
    # Any reply that waited on the index fails the bound above; this one fails if the server queued the burst
    # behind the index: its 2 query threads would need 40 x 300 ms / 2 = 6 s, and a third of that leaves room
    # for a loaded CI machine.
    waited_s = 40 * 0.300 / PATTERNS.pool_size
    assert max(lat for _, lat in results) < waited_s / 3


def test_a_failing_index_fails_open_as_error(served):
    st, retriever = served
    retriever.set_fault(delay_ms=0, error_rate=1.0)
    with Client(st.address) as c:
        assert c.request(signal_body()).patterns == p.Patterns(0, True, "error")


def test_disable_patterns_switches_every_request_to_regime_only_within_a_second(served):
    st, _ = served
    with Client(st.address) as c:
        assert not c.request(signal_body()).patterns.fail_open
        assert c.admin("disable_patterns", token=TOKEN).ok
        start = time.monotonic()
        reply = c.request(signal_body())
        assert time.monotonic() - start < 1.0
        assert reply.patterns == p.Patterns(0, True, "disabled")
        assert reply.forecast.fine == 0.0  # the engine saw an all-zero mask
        c.admin("enable_patterns", token=TOKEN)
        assert not c.request(signal_body()).patterns.fail_open
