"""The `serve --workers N --metrics-port P` endpoint: every worker's metrics labelled by worker, /livez, /readyz."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from prometheus_client import CollectorRegistry
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
        m.serve_http(port, ready=lambda: True)
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


def _serve_raw(response: bytes) -> tuple[object, int]:
    """A TCP server that answers every connection with `response` and closes it: a worker gone wrong."""
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def answer() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:  # closed: the test is over
                return
            with conn:
                conn.recv(65536)
                conn.sendall(response)

    threading.Thread(target=answer, daemon=True).start()
    return srv, srv.getsockname()[1]


def test_a_worker_that_answers_with_something_else_than_metrics_is_left_out_of_the_scrape():
    good = free_port()
    m = ServerMetrics()
    m.requests.labels("signal", "ok").inc(3)
    m.serve_http(good, ready=lambda: True)
    not_http, bad_status = _serve_raw(b"garbage\r\n\r\n")  # http.client.BadStatusLine
    not_metrics, bad_text = _serve_raw(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nthis is { not metrics\n")
    port = free_port()
    stop = serve_http(port, {"w0": good, "w1": bad_status, "w2": bad_text}, lambda: 1)
    try:
        status, text = _get(f"http://127.0.0.1:{port}/metrics")
    finally:
        stop()
        m.stop_http()
        not_http.close()
        not_metrics.close()
    assert status == 200, text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {s.labels["worker"] for s in families["dualhrq_requests"].samples} == {"w0"}


def test_a_metrics_port_in_use_is_a_configuration_error_naming_serve_metrics_port():
    import pytest

    from dualhrq.errors import ConfigurationError

    taken = free_port()
    stop = serve_http(taken, {}, lambda: 0)
    try:
        with pytest.raises(ConfigurationError, match=f"serve.metrics_port: cannot serve metrics on 127.0.0.1:{taken}"):
            serve_http(taken, {}, lambda: 0)
    finally:
        stop()


def test_a_connection_that_sends_nothing_holds_neither_the_probes_nor_the_stop():
    import socket

    from dualhrq.runtime.probes import probe_app, serve_app

    port = free_port()
    stop = serve_app(probe_app(CollectorRegistry(), lambda: True, "not ready"), port, "127.0.0.1", "test-probes")
    idle = socket.create_connection(("127.0.0.1", port))
    try:
        t0 = time.monotonic()
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz/", timeout=2).read() == b"ok\n"
        stop()
        assert time.monotonic() - t0 < 2.0  # not until the idle client's timeout
    finally:
        idle.close()
