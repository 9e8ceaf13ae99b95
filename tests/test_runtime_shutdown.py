"""`serve` as a process: SIGTERM stops receiving, answers what is in flight, and exits 0 in bounded time."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time

import pytest
import yaml
from runtime_fixtures import free_port, real_signal_body, runtime_cli, tiny_bundle, wait_ready  # noqa: F401

from dualhrq.runtime import protocol as p
from dualhrq.runtime.client import AsyncClient


@pytest.mark.slow  # a real process: ~10 s of imports and loading on this CPU
def test_sigterm_drains_in_flight_requests_and_exits_zero(tiny_bundle, tmp_path):
    # The fault drill holds each request 300 ms in retrieval: they are surely in flight when SIGTERM lands.
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({
        "serve": {"intra_op_threads": 1, "max_batch": 4, "drain_timeout_s": 5.0},
        "patterns": {"timeout_ms": 300.0, "pool_size": 16, "fault": {"delay_ms": 2000.0}}}))
    address = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen(runtime_cli("serve", "--bundle", str(tiny_bundle), "--config", str(config),
                                        "--bind", address), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        pong = wait_ready(address, proc=proc)

        async def in_flight_then_sigterm():
            async with AsyncClient(address, timeout_s=10, retries=0) as c:
                body = real_signal_body("x", (pong.needs.coarse, pong.needs.fine))
                pending = [asyncio.create_task(c.request(body)) for _ in range(8)]
                await asyncio.sleep(0.15)
                proc.send_signal(signal.SIGTERM)
                return await asyncio.gather(*pending, return_exceptions=True)

        replies = asyncio.run(in_flight_then_sigterm())
        start = time.monotonic()
        code = proc.wait(timeout=30)
        exited_in = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.stdout.read().decode(errors="replace")
    assert code == 0, output
    assert all(isinstance(r, p.SignalReply) and r.patterns.reason == "timeout" for r in replies), replies
    assert exited_in < 15, f"took {exited_in:.1f} s to exit"
    assert "draining" in output
