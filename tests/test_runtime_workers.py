"""`serve --workers 2` as a process: instrument affinity, admin relay, and a worker SIGKILLed under load
(every request still gets exactly one reply, a replacement serves within seconds)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import msgpack
import pytest
import yaml
import zmq
from runtime_fixtures import free_port, real_signal_body, runtime_cli, tiny_bundle, wait_ready  # noqa: F401

from dualhrq.runtime import protocol as p
from dualhrq.runtime.client import Client

TOKEN = "w-token"
OVERLAY = {"serve": {"intra_op_threads": 1, "max_batch": 4, "admin_tokens": [TOKEN], "drain_timeout_s": 2.0}}
INSTRUMENTS = ["EURUSD", "GBPUSD", "USDJPY", "AUDUSD", "USDCHF", "NZDUSD", "USDCAD", "EURGBP"]
MARKET = {"ts": 1_700_000_000_000_000_000, "last": 1.1, "bid": 1.0999, "ask": 1.1001, "prior_close": 1.1,
          "luld_tier": 1}


def _stats_by_pid(address: str, rounds: int = 4) -> dict[int, dict]:
    """Requests without an instrument go round the live workers: a few rounds reach every one."""
    seen: dict[int, dict] = {}
    with Client(address, timeout_s=5, retries=0) as c:
        for _ in range(rounds):
            detail = c.admin("stats", token=TOKEN).detail
            seen[detail["pid"]] = detail
    return seen


def _signals(detail: dict) -> float:
    return detail["counters"].get("dualhrq_requests_total|code=ok|type=signal", 0)


def _pong_workers(address: str) -> int:
    with Client(address, timeout_s=2, retries=0) as c:
        return c.ping().workers


def _load(address: str, bodies: list[dict], in_flight: int, kill_after: int, victim: int) -> dict:
    """Closed loop over one DEALER; SIGKILL `victim` once `kill_after` requests are out. Pings on the side
    (every 50 ms, not counted) time when the broker, having announced one live worker, announces two again."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    replies: dict[str, list[dict]] = {}
    sent, killed_at, down, back_at, next_ping, pings = 0, None, False, None, 0.0, 0
    until = time.monotonic() + 120
    while sent < min(in_flight, len(bodies)):
        sock.send(msgpack.packb(bodies[sent]))
        sent += 1
    while (sum(map(len, replies.values())) < len(bodies) or (killed_at and not back_at)) \
            and time.monotonic() < until:
        now = time.monotonic()
        if killed_at and not back_at and now >= next_ping:
            pings += 1
            sock.send(msgpack.packb({"type": "ping", "id": f"ping-{pings}"}))
            next_ping = now + 0.05
        if not sock.poll(20):
            continue
        reply = msgpack.unpackb(sock.recv())
        if reply["id"].startswith("ping-"):
            down = down or reply.get("workers") == 1
            if down and reply.get("workers") == 2 and not back_at:
                back_at = time.monotonic()
            continue
        replies.setdefault(reply["id"], []).append(reply)
        if sent < len(bodies):
            sock.send(msgpack.packb(bodies[sent]))
            sent += 1
            if sent == kill_after:
                os.kill(victim, signal.SIGKILL)
                killed_at = time.monotonic()
    while sock.poll(300):  # nothing more may come: exactly one reply each
        reply = msgpack.unpackb(sock.recv())
        if not reply["id"].startswith("ping-"):
            replies.setdefault(reply["id"], []).append(reply)
    sock.close()
    ctx.term()
    return {"replies": replies, "replacement_s": back_at - killed_at if back_at and killed_at else None}


@pytest.mark.slow  # two real worker processes, one killed and replaced: ~40 s on this CPU
def test_two_workers_keep_affinity_relay_admin_and_lose_no_reply_when_one_is_killed(tiny_bundle, tmp_path):
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump(OVERLAY))
    address = f"tcp://127.0.0.1:{free_port()}"
    log = tmp_path / "server.log"  # a file, not a pipe: three processes' logs must never block on a full pipe
    proc = subprocess.Popen(runtime_cli("serve", "--bundle", str(tiny_bundle), "--config", str(config),
                                        "--bind", address, "--workers", "2"),
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        pong = wait_ready(address, proc=proc)
        needs = (pong.needs.coarse, pong.needs.fine)
        until = time.monotonic() + 120
        while _pong_workers(address) < 2:  # the second worker may still be warming up
            assert time.monotonic() < until
            time.sleep(0.2)

        # Affinity: every request of an instrument is answered by one worker.
        owner: dict[str, int] = {}
        with Client(address, timeout_s=10, retries=0) as c:
            for sym in INSTRUMENTS:
                before = {pid: _signals(d) for pid, d in _stats_by_pid(address).items()}
                for i in range(6):
                    assert isinstance(c.request(real_signal_body(f"{sym}-{i}", needs, instrument=sym)),
                                      p.SignalReply)
                grew = {pid: _signals(d) - before[pid] for pid, d in _stats_by_pid(address).items()}
                assert sorted(grew.values()) == [0, 6], (sym, grew)
                owner[sym] = max(grew, key=grew.get)
            # Admin state reaches the worker that did not take the admin request, through the control bus.
            assert c.admin("kill_switch_on", token=TOKEN).ok
            assert all(d["kill_switch"] for d in _stats_by_pid(address).values())
            assert c.admin("kill_switch_off", token=TOKEN).ok
        assert {d["workers"] for d in _stats_by_pid(address).values()} == {2}

        # 400 requests, 16 in flight, a quarter carrying `market`; the owner of EURUSD is SIGKILLed after 150.
        bodies = [real_signal_body(f"r{i}", needs, instrument=INSTRUMENTS[i % len(INSTRUMENTS)],
                                   **({"market": MARKET} if i % 4 == 0 else {})) for i in range(400)]
        victim = owner["EURUSD"]
        result = _load(address, bodies, in_flight=16, kill_after=150, victim=victim)
        replies = result["replies"]
        lost = [b["id"] for b in bodies if b["id"] not in replies]
        doubled = [rid for rid, rs in replies.items() if len(rs) > 1]
        errors = [rs[0] for rs in replies.values() if rs[0]["type"] == "error"]
        print(f"\nlost {len(lost)}, doubled {len(doubled)}, lost-worker errors {len(errors)}, "
              f"replacement announced after {result['replacement_s']} s")
        assert not lost and not doubled
        # Only requests that may have reached the dead worker's gate are answered as lost; the rest were re-sent.
        assert all(e["code"] == "internal" and "lost" in e["message"] for e in errors), errors
        assert all(bodies[int(e["id"][1:])].get("market") for e in errors)
        assert result["replacement_s"] is not None and result["replacement_s"] < 5.0

        # The replacement took its slot back (EURUSD with it) and serves; every request after is answered.
        stats = _stats_by_pid(address)
        assert victim not in stats and len(stats) == 2
        with Client(address, timeout_s=10, retries=0) as c:
            for sym in INSTRUMENTS:
                assert isinstance(c.request(real_signal_body(f"{sym}-after", needs, instrument=sym)), p.SignalReply)
        fresh = {pid: _signals(d) for pid, d in _stats_by_pid(address).items()}
        assert all(n > 0 for n in fresh.values()), fresh
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        output = log.read_text(errors="replace")
    assert code == 0, output
    assert "restarting it" in output
