"""The inference thread's edges: deadlines judged after the batching window, and an engine never closed under a
batch still running."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from runtime_fixtures import CountingEngine, row_inputs, zero_carry

from dualhrq.config import ActConfig, ServeConfig
from dualhrq.runtime.batcher import Batcher, Expired
from dualhrq.runtime.host import ModelHost


class ClosingEngine(CountingEngine):
    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.closed = False

    def close(self) -> None:
        self.closed = True


def _batcher(engine, upstream=lambda: 0, **serve) -> Batcher:
    return Batcher(engine, ActConfig(min_segments=1, max_segments=4), ServeConfig(**serve), zero_carry,
                   upstream=upstream)


def test_a_deadline_that_passes_while_the_batch_gathers_is_expired_not_run():
    engine = ClosingEngine()
    # More is said to be on the way (upstream), so the thread waits the whole 0.3 s window for company.
    batcher = _batcher(engine, max_batch=4, max_wait_us=300_000, upstream=lambda: 1).start()

    async def go() -> None:
        with pytest.raises(Expired):
            await batcher.submit(row_inputs(), deadline=time.perf_counter() + 0.05)

    try:
        asyncio.run(go())
    finally:
        batcher.stop()
    assert engine.calls == []


def test_closing_a_host_whose_thread_still_runs_a_batch_leaves_its_engine_open(caplog):
    engine = ClosingEngine(delay_s=0.5)
    host = ModelHost(name="slow", config=None, inputs=None, batcher=_batcher(engine).start())

    async def go() -> None:
        running = host.batcher.submit(row_inputs())
        while host.batcher.depth:  # until the thread has taken the row: it is in its 0.5 s run then
            await asyncio.sleep(0.005)
        host.close(timeout=0.05)
        assert not engine.closed
        await running  # the batch finishes on its engine

    with caplog.at_level(logging.WARNING, logger="dualhrq.runtime.host"):
        asyncio.run(go())
    assert any("left open" in r.getMessage() for r in caplog.records)
    host.close(timeout=5.0)  # the thread has ended now: the engine is closed
    assert engine.closed
