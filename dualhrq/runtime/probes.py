"""Metrics and health probes over HTTP: one WSGI app that answers /livez, /readyz and, on any other path, a
Prometheus registry, served from a daemon thread. A single server serves its own registry with it; `serve
--workers N` serves the workers' merged metrics (dualhrq.runtime.workers_http).

/livez is 200 for as long as the endpoint runs (it stops with its server); /readyz is 200 while `ready()`
holds and 503 otherwise, so that a load balancer stops sending before a drain and during a load.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from dualhrq.errors import ConfigurationError

App = Callable[[dict, Callable], list[bytes]]


def probe_app(registry: CollectorRegistry, ready: Callable[[], bool], not_ready: str) -> App:
    """The registry's metrics, with /livez and /readyz; `not_ready` is /readyz's body when it answers 503."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        path = environ.get("PATH_INFO", "").rstrip("/")
        if path in ("/livez", "/readyz"):
            ok = path == "/livez" or ready()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"ok\n" if ok else not_ready.encode() + b"\n"]
        return metrics(environ, start_response)

    return app


class _Quiet(WSGIRequestHandler):
    timeout = 5.0  # seconds a connection may send nothing: an idle client's thread ends then

    def log_message(self, *args: object) -> None:  # scrapes every few seconds must not flood the log
        pass


class _Server(ThreadingMixIn, WSGIServer):
    """A thread per connection, none waited for: a client that connects and sends nothing (a port scan, a
    half-open health check) holds neither the other probes nor the server's stop."""

    daemon_threads = True


def serve_app(app: App, port: int, addr: str, thread_name: str) -> Callable[[], None]:
    """Serve `app` on addr:port from a daemon thread; returns the function that stops it (and frees the port).
    A port that cannot be bound is a ConfigurationError naming serve.metrics_port."""
    try:
        server = make_server(addr, port, app, server_class=_Server, handler_class=_Quiet)
    except OSError as e:
        raise ConfigurationError(f"serve.metrics_port: cannot serve metrics on {addr}:{port}: {e}") from None
    threading.Thread(target=server.serve_forever, name=thread_name, daemon=True).start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return stop
