"""Two worker processes behind the broker: both serve, admin state reaches both, one dies and the other goes on."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from pathlib import Path

import pytest
from runtime_fixtures import free_port, real_signal_body, tiny_bundle, wait_ready  # noqa: F401

from dualhrq.runtime import protocol as p
from dualhrq.runtime.client import AsyncClient, Client, RequestTimeout
from dualhrq.runtime.workers import Broker, BrokerAddresses, start_workers

TOKEN = "w-token"
OVERLAY = {"serve": {"intra_op_threads": 1, "max_batch": 2, "admin_tokens": [TOKEN], "drain_timeout_s": 2.0}}


def _stats_by_pid(address: str, rounds: int = 12) -> dict[int, dict]:
    """Ask for stats repeatedly: the broker hands requests round-robin, so every live worker answers some."""
    seen: dict[int, dict] = {}
    with Client(address, timeout_s=5, retries=0) as c:
        for _ in range(rounds):
            detail = c.admin("stats", token=TOKEN).detail
            seen[detail["pid"]] = detail
    return seen


@pytest.mark.slow
def test_two_workers_share_the_load_relay_admin_and_survive_losing_one(tiny_bundle):
    addresses = BrokerAddresses.local(f"tcp://127.0.0.1:{free_port()}")
    broker = Broker(addresses).start()
    procs = start_workers(2, str(tiny_bundle), OVERLAY, "test", addresses)
    try:
        pong = wait_ready(addresses.frontend)
        needs = (pong.needs.coarse, pong.needs.fine)
        body = real_signal_body("w", needs)
        while len(_stats_by_pid(addresses.frontend, 4)) < 2:  # the second worker may still be warming up
            pass

        async def burst(n: int, timeout_s: float = 10.0):
            async with AsyncClient(addresses.frontend, timeout_s=timeout_s, retries=0) as c:
                return await asyncio.gather(*(c.request(body) for _ in range(n)), return_exceptions=True)

        replies = asyncio.run(burst(40))
        assert all(isinstance(r, p.SignalReply) for r in replies)
        per_worker = {pid: d["counters"].get("dualhrq_requests_total|code=ok|type=signal", 0)
                      for pid, d in _stats_by_pid(addresses.frontend).items()}
        assert len(per_worker) == 2 and all(n > 0 for n in per_worker.values()), per_worker

        # Admin state reaches the worker that did not take the admin request, through the control bus.
        with Client(addresses.frontend, timeout_s=5) as c:
            assert c.admin("kill_switch_on", token=TOKEN).ok
        held = asyncio.run(burst(10))
        assert all(r.action == "HOLD" and r.compliance.reasons == ["kill_switch"] for r in held)
        assert all(d["kill_switch"] for d in _stats_by_pid(addresses.frontend).values())

        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].join(10)
        # Requests the dead worker held time out; nothing comes back garbled, and the survivor serves.
        after = asyncio.run(burst(20, timeout_s=3.0))
        assert all(isinstance(r, (p.SignalReply, RequestTimeout)) for r in after), after
        settled = asyncio.run(burst(20))
        assert all(isinstance(r, p.SignalReply) for r in settled)
    finally:
        for proc in procs:
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.join(20)
            if proc.is_alive():
                proc.kill()
        broker.stop()
        shutil.rmtree(Path(addresses.backend.removeprefix("ipc://")).parent, ignore_errors=True)
    assert procs[1].exitcode == 0  # the survivor drained and exited cleanly on SIGTERM
