"""Latency load generator over a real ZeroMQ DEALER socket.

Open loop (`rate`): request i is due at t0 + i / rate and its latency is measured from that scheduled time,
not from when it was actually sent. If the server (or this process) stalls, the requests that should have gone
out during the stall are charged the stall too; measuring from the actual send time would hide it
("coordinated omission"). Closed loop (`concurrency`): C requests are kept in flight; each reply releases the
next. Closed loop measures service time under a fixed load but, by construction, under-reports stalls.
"""

from __future__ import annotations

import gc
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgpack
import zmq

from dualhrq.errors import ConfigurationError


@dataclass
class RequestTiming:
    latency_ms: float  # from the scheduled (open loop) or actual (closed loop) send time to the reply
    kind: str  # "signal", or the error code, or "timeout"
    fail_open: bool = False
    fail_reason: str | None = None
    timing_us: dict[str, float] = field(default_factory=dict)


@dataclass
class LoadResult:
    samples: list[RequestTiming]
    wall_s: float
    mode: str

    @property
    def throughput(self) -> float:
        return len(self.samples) / self.wall_s if self.wall_s > 0 else 0.0


def _parse(body: bytes, due: float, now: float) -> RequestTiming:
    reply = msgpack.unpackb(body, raw=False)
    kind = reply.get("type", "?")
    if kind == "error":
        kind = reply.get("code", "error")
    patterns = reply.get("patterns") or {}
    return RequestTiming((now - due) * 1e3, kind, bool(patterns.get("fail_open")), patterns.get("reason"),
                  reply.get("timing_us") or {})


def _check_mode(rate: float | None, concurrency: int | None) -> None:
    if (rate is None) == (concurrency is None):
        raise ConfigurationError("rate, concurrency: give exactly one of rate (open loop) or concurrency (closed loop)")
    if rate is not None and rate <= 0:
        raise ConfigurationError(f"rate: must be > 0 requests per second, got {rate}")
    if concurrency is not None and concurrency < 1:
        raise ConfigurationError(f"concurrency: must be >= 1, got {concurrency}")


def _dealer(address: str, curve: Sequence[bytes] | None) -> zmq.Socket:
    """A DEALER connected to `address` that never drops nor blocks on its own queues (unbounded both ways): a
    request the bench lost to a high-water mark would count against the server."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    if curve:
        server_public, client_public, client_secret = curve
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = server_public, client_public, client_secret
    sock.connect(address)
    return sock


def run_load(address: str, make_request: Callable[[int, str], dict], n: int, *, rate: float | None = None,
             concurrency: int | None = None, timeout_s: float = 5.0, curve: Sequence[bytes] | None = None,
             progress: Callable[[int], None] | None = None) -> LoadResult:
    """Send `n` requests built by `make_request(i, id)` and collect one RequestTiming per request.

    Exactly one of `rate` (open loop, requests/s) and `concurrency` (closed loop) must be given. A request
    without a reply after `timeout_s` counts as kind "timeout" with latency = timeout.
    """
    _check_mode(rate, concurrency)
    sock = _dealer(address, curve)
    prefix = uuid.uuid4().hex[:8]
    # Encode everything up front so the timed loop only does socket work.
    bodies = [msgpack.packb(make_request(i, f"{prefix}-{i}"), use_bin_type=True) for i in range(n)]
    pending: dict[str, float] = {}  # id -> time the latency is measured from
    samples: list[RequestTiming] = []
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    sent = 0
    # Nor does the cyclic collector run meanwhile: a full collection of this process's heap took 27-153 ms
    # in a measured run, charged to the server as the max. What the loop allocates reference counting frees.
    collecting = gc.isenabled()
    gc.collect()
    gc.disable()
    t0 = time.perf_counter()

    def send(i: int, due: float) -> None:
        pending[f"{prefix}-{i}"] = due
        sock.send_multipart([b"", bodies[i]])

    try:
        if concurrency is not None:
            while sent < min(concurrency, n):
                send(sent, time.perf_counter())
                sent += 1
        while len(samples) < n:
            now = time.perf_counter()
            if rate is not None:
                while sent < n and t0 + sent / rate <= now:
                    send(sent, t0 + sent / rate)
                    sent += 1
                wait_ms = max(0.0, (t0 + sent / rate - time.perf_counter()) * 1e3) if sent < n else 50.0
            else:
                wait_ms = 50.0
            for _ in range(len(poller.poll(min(wait_ms, 50.0)))):
                while True:
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    now = time.perf_counter()
                    reply_id = msgpack.unpackb(frames[-1], raw=False).get("id")
                    due = pending.pop(reply_id, None)
                    if due is None:  # a reply to an id we already gave up on
                        continue
                    samples.append(_parse(frames[-1], due, now))
                    if progress:
                        progress(len(samples))
                    if concurrency is not None and sent < n:
                        send(sent, time.perf_counter())
                        sent += 1
            now = time.perf_counter()
            for rid, due in list(pending.items()):
                if now - due > timeout_s:
                    del pending[rid]
                    samples.append(RequestTiming(timeout_s * 1e3, "timeout"))
                    if concurrency is not None and sent < n:
                        send(sent, time.perf_counter())
                        sent += 1
    finally:
        if collecting:
            gc.enable()
        sock.close(0)
    return LoadResult(samples, time.perf_counter() - t0, "open" if rate is not None else "closed")
