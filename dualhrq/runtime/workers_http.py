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
import urllib.request
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from dualhrq.runtime.probes import probe_app, serve_app

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


def serve_http(port: int, ports: dict[str, int], live: Callable[[], int], addr: str = "127.0.0.1") -> Callable[[], None]:
    """Start the endpoint on a daemon thread; returns the function that stops it."""
    registry = CollectorRegistry()
    registry.register(_Workers(ports, live))
    return serve_app(probe_app(registry, lambda: live() > 0, "no worker ready"), port, addr, "workers-http")
