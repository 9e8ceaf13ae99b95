"""One HTTP port for `serve --workers N --metrics-port P`: every worker's metrics, /livez and /readyz.

Each worker serves its own registry on 127.0.0.1:P+1+i (slot w<i>); a scrape of P fetches them all and
labels every sample with `worker`, beside the supervisor's `dualhrq_workers_live`. A worker that does not
answer (restarting), or answers with something that is not metrics, is left out of that scrape. /livez is
200 while the supervisor runs; /readyz is 200 while at least one worker is registered with the broker and
serving, 503 otherwise.
"""

from __future__ import annotations

import http.client
import logging
import threading
import urllib.request
from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from dualhrq.errors import ConfigurationError

log = logging.getLogger(__name__)


def worker_port(port: int, slot_index: int) -> int:
    return port + 1 + slot_index


class _Workers:
    """A collector that scrapes the workers at collect time."""

    def __init__(self, ports: dict[str, int], live: Callable[[], int]) -> None:
        self._ports, self._live = ports, live

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for slot, port in self._ports.items():
            for family in self._scrape(slot, port):
                m = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                m.samples += [s._replace(labels={**s.labels, "worker": slot}) for s in family.samples]
        yield from merged.values()
        yield GaugeMetricFamily("dualhrq_workers_live", "Workers registered with the broker and serving",
                                value=self._live())

    @staticmethod
    def _scrape(slot: str, port: int) -> list[Metric]:
        """One worker's metric families, parsed in full here: [] when it does not answer with metrics, so that
        one worker never fails the scrape of the others."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1.0) as r:
                return list(text_string_to_metric_families(r.read().decode()))
        except OSError:  # not listening (restarting) or timed out: the usual case, not worth a log line
            return []
        except (http.client.HTTPException, ValueError) as e:  # a broken response, or text that is not metrics
            log.warning("metrics of worker %s (port %d) left out of this scrape: %s: %s", slot, port,
                        type(e).__name__, e)
            return []


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:  # scrapes every few seconds must not flood the log
        pass


def serve_http(port: int, ports: dict[str, int], live: Callable[[], int], addr: str = "127.0.0.1") -> Callable[[], None]:
    """Start the endpoint on a daemon thread; returns the function that stops it."""
    registry = CollectorRegistry()
    registry.register(_Workers(ports, live))
    metrics = make_wsgi_app(registry)

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/livez", "/readyz"):
            ok = path == "/livez" or live() > 0
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"ok\n" if ok else b"no worker ready\n"]
        return metrics(environ, start_response)

    try:
        server = make_server(addr, port, app, handler_class=_Quiet)
    except OSError as e:
        raise ConfigurationError(f"serve.metrics_port: cannot serve metrics on {addr}:{port}: {e}") from None
    threading.Thread(target=server.serve_forever, name="workers-http", daemon=True).start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return stop
