"""Which model a server serves: its first bundle's load, reloads that load another beside it and swap, and the
retirement of the host a reload replaced once its last request is done.

A worker of a broker may be handed over a bundle that a reload named elsewhere; one that does not load here is
retried, not fatal (`Hosting.first`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from dualhrq.errors import ModelLoadError
from dualhrq.runtime.backend import Echo
from dualhrq.runtime.heap import freeze_heap
from dualhrq.runtime.host import HostHooks, ModelHost

log = logging.getLogger(__name__)

Loader = Callable[[str, HostHooks], ModelHost]  # bundle path -> a verified, warmed host (blocking)

# A handed-over bundle that does not load is tried again after FIRST_RETRY_S, doubling up to LAST_RETRY_S; a reload
# relayed meanwhile is noticed within RETRY_POLL_S.
FIRST_RETRY_S, LAST_RETRY_S, RETRY_POLL_S = 1.0, 30.0, 0.2


class Hosting:
    """The host served (`host`, None before the first load and after `take`), the bundle it came from, and
    whether a reload named it. ``swapped(old)`` runs as a reload swaps hosts, before any request sees the new
    one: the server drops what it built with the old one and retires it (`retire`)."""

    def __init__(self, loader: Loader, bundle: str, hooks: HostHooks, stopping: asyncio.Event,
                 swapped: Callable[[ModelHost | None], None]) -> None:
        self.host: ModelHost | None = None
        self.bundle = bundle
        # Whether the bundle held is one a reload named (a sibling's, or this worker's): what `first` retries
        # instead of failing, and what a broker that rejoined with its defaults is taught.
        self.reloaded = False
        self._own_bundle = bundle  # the one it was started with; a broker may hand over another
        self._loading: str | None = None  # the bundle a reload is loading now
        self._loader, self._hooks = loader, hooks
        self._stopping, self._swapped = stopping, swapped
        self._lock = asyncio.Lock()

    def held(self) -> tuple[str, bool]:
        """(bundle, reloaded) as a broker that rejoined with its defaults is taught them: a reload loading now
        counts, not the bundle it replaces."""
        return self._loading or self.bundle, self.reloaded or self._loading is not None

    def adopt(self, bundle: str, reloaded: bool) -> None:
        """Take the bundle a broker holds (none named: keep this one) before the first load."""
        self.bundle, self.reloaded = bundle or self.bundle, reloaded

    async def first(self) -> ModelHost | None:
        """The host to serve: the bundle held now (None: stopped first). After a reload has passed through the
        broker (a sibling's: another bundle, or the same path replaced), a bundle that does not load here is
        retried, not fatal: this worker stays off the broker, so that its instruments go to the workers that
        serve it, until the bundle loads, a relayed reload loads one, or the stop; it logs each failure, and the
        supervisor's /readyz fails while no worker is registered. Without a reload, its own bundle failing is
        fatal: a configuration that cannot work."""
        next_try, delay = 0.0, FIRST_RETRY_S
        while not self._stopping.is_set():
            async with self._lock:  # a reload relayed while this loads waits, then loads beside it
                if self.host is not None:  # a relayed reload loaded one meanwhile
                    return self.host
                bundle = self.bundle
                if time.monotonic() >= next_try:
                    try:
                        self.host = (await asyncio.to_thread(self._loader, bundle, self._hooks)).start()
                        return self.host
                    except Exception as e:
                        if bundle == self._own_bundle and not self.reloaded:
                            raise
                        log.error("cannot load %s, the bundle of the broker's last reload (%s: %s): this worker "
                                  "takes no requests until it loads; retrying in %.0f s, or at the next reload",
                                  bundle, type(e).__name__, e, delay)
                    next_try, delay = time.monotonic() + delay, min(2 * delay, LAST_RETRY_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), RETRY_POLL_S)
        return None

    async def reload(self, bundle: str, echo: Echo | None = None) -> dict[str, Any]:
        """Load and warm `bundle` beside the host served, then swap. ``echo`` (this worker's own reload come
        back): nothing to do when `bundle` is the one loaded or a later reload of this worker's followed it,
        decided in the lock's order (the order the reloads were asked for): a reload of this worker's that
        loaded meanwhile is the later one."""
        async with self._lock:
            if self._stopping.is_set():  # the drain closes the host it takes: one swapped in later would leak
                raise ModelLoadError("reload: the server is shutting down")
            if echo is not None and self.host is not None and (bundle == self.bundle or not echo()):
                return {"model": self.host.name, "previous": self.host.name, "bundle": self.bundle}
            try:
                self._loading = bundle  # a broker that rejoins meanwhile is taught this one, not the one it replaces
                new = (await asyncio.to_thread(self._loader, bundle, self._hooks)).start()
            except Exception:
                if self.host is None:  # still waiting for a first bundle: try the cluster's latest next
                    self.bundle, self.reloaded = bundle, True
                raise
            finally:
                self._loading = None
            freeze_heap(collect=False)  # in flight requests would wait out a collection
            old, self.host = self.host, new
            self.bundle, self.reloaded = bundle, True
            self._swapped(old)
        return {"model": new.name, "previous": old.name if old else None, "bundle": bundle}

    async def take(self) -> ModelHost | None:
        """The host served, no longer served: a reload still loading ends first, one asked for later is refused."""
        async with self._lock:
            host, self.host = self.host, None
        return host

    @staticmethod
    async def retire(host: ModelHost, timeout_s: float) -> None:
        """Close `host` once its last request is done, or once the drain cancelled them: never left open."""
        try:
            await host.drained()
        finally:
            await asyncio.to_thread(host.close, timeout_s)
            log.info("retired %s", host.name, extra={"event": "retired", "model": host.name})
