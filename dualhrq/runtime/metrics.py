"""Prometheus metrics of one server process, and the counters `admin stats` returns.

Each Server owns its registry (several servers in one process, as in the tests, never collide), exposed on
an optional HTTP port for as long as the server runs. Gauges that describe state (queue depth, in flight) are
read at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from dualhrq.runtime.probes import probe_app, serve_app

if TYPE_CHECKING:
    from dualhrq.runtime.protocol import Timing

STAGES = ("decode", "features", "retrieval", "queue", "engine", "total")
# Seconds: from 50 us (the runtime's own stages) to 1 s (a full model under load).
_LATENCY_BUCKETS = (5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5, 1.0)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("dualhrq_requests", "Replies sent, by request type and result code ('ok' or the "
                                "error code)", ["type", "code"], registry=r)
        self.stage_seconds = Histogram("dualhrq_stage_seconds", "Time per request in each stage",
                                       ["stage"], buckets=_LATENCY_BUCKETS, registry=r)
        self.fail_open = Counter("dualhrq_fail_open", "Signals served regime-only, by reason", ["reason"],
                                 registry=r)
        self.batch_size = Histogram("dualhrq_batch_size", "Rows per engine batch", buckets=(1, 2, 4, 8, 16, 32, 64),
                                    registry=r)
        self.engine_seconds = Histogram("dualhrq_engine_batch_seconds", "ACT loop time per batch",
                                        buckets=_LATENCY_BUCKETS, registry=r)
        self.undeliverable = Counter("dualhrq_undeliverable_replies", "Replies ZeroMQ could not deliver (peer "
                                     "gone or its queue full); dropped without blocking", registry=r)
        self.in_flight = Gauge("dualhrq_in_flight", "Requests received and not yet answered", registry=r)
        self.queue_depth = Gauge("dualhrq_queue_depth", "Rows waiting for the inference thread", registry=r)
        self.ready = Gauge("dualhrq_ready", "1 when a verified, warmed model is serving", registry=r)
        self._stage = {s: self.stage_seconds.labels(s) for s in STAGES}
        self._stop_http: Callable[[], None] | None = None

    def watch_queue(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(depth)

    def observe_stages(self, timing_us: Timing) -> None:
        """A signal reply's stages (its `timing_us`, microseconds), observed once the reply has gone."""
        for stage in STAGES[:-1]:  # the total is observed apart: it runs until the reply is sent
            self._stage[stage].observe(getattr(timing_us, stage) / 1e6)

    def observe_batch(self, size: int, seconds: float) -> None:
        """Called from the inference thread (prometheus_client metrics are thread-safe)."""
        self.batch_size.observe(size)
        self.engine_seconds.observe(seconds)

    def serve_http(self, port: int, ready: Callable[[], bool], addr: str = "127.0.0.1") -> None:
        """Serve the registry, /livez and /readyz (200 while `ready()`) on addr:port until `stop_http`."""
        self._stop_http = serve_app(probe_app(self.registry, ready, "not ready"), port, addr, "metrics-http")

    def stop_http(self) -> None:
        """Close the endpoint (a server that stopped must not look alive to its scraper); idempotent."""
        stop, self._stop_http = self._stop_http, None
        if stop is not None:
            stop()

    def snapshot(self) -> dict[str, Any]:
        """Counters and gauges as plain numbers (histograms as count and sum), for `admin stats`."""
        out: dict[str, Any] = {}
        for family in self.registry.collect():
            for s in family.samples:
                if s.name.endswith(("_created", "_bucket")):
                    continue
                key = s.name + "".join(f"|{k}={v}" for k, v in sorted(s.labels.items()))
                out[key] = s.value
        return out
