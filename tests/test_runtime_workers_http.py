"""The `serve --workers N --metrics-port P` endpoint: every worker's metrics labelled by worker, /livez, /readyz."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from runtime_fixtures import free_port

from dualhrq.runtime.metrics import ServerMetrics
from dualhrq.runtime.workers_http import serve_http


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_one_port_covers_every_worker_and_says_ready_while_one_is_live():
    ports = {"w0": free_port(), "w1": free_port()}
    for slot, port in ports.items():
        m = ServerMetrics()
        m.requests.labels("signal", "ok").inc(3 if slot == "w0" else 5)
        m.serve_http(port)
    live = [2]
    port = free_port()
    stop = serve_http(port, {**ports, "w2": free_port()}, lambda: live[0])  # w2: restarting, not answering
    try:
        time.sleep(0.1)
        status, text = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        families = {f.name: f for f in text_string_to_metric_families(text)}
        ok = {s.labels["worker"]: s.value for s in families["dualhrq_requests"].samples
              if s.name == "dualhrq_requests_total"}
        assert ok == {"w0": 3.0, "w1": 5.0}
        assert families["dualhrq_workers_live"].samples[0].value == 2
        assert _get(f"http://127.0.0.1:{port}/livez")[0] == 200
        assert _get(f"http://127.0.0.1:{port}/readyz")[0] == 200
        live[0] = 0
        assert _get(f"http://127.0.0.1:{port}/readyz")[0] == 503
        assert _get(f"http://127.0.0.1:{port}/livez")[0] == 200
    finally:
        stop()
