"""Pattern retrieval with a hard deadline that fails open to regime-only conditioning.

A signal must never wait on the pattern index longer than its retrieval timeout. A retrieval (encode, query,
build the context) whose time could not be bounded runs on a small, bounded pool of threads; hnswlib and numpy
release the GIL, so a query truly runs beside the caller. The caller waits at most ``timeout_s`` and otherwise
gets a fail-open result: an all-zero context with an all-zero mask (the model's regime-only path) and the
reason. A retrieval of fixed cost (the library's exact search over at most a few thousand entries, no update
holding the index, no fault drill) runs on the caller's thread: tens of microseconds, where the hand-off to a
worker and back, on cold caches after an engine run, cost ~0.5 ms (measured on 2 cores).

A query that overruns keeps its thread until the index lets go of it; Python cannot cancel it. So a free
worker is claimed before submitting, and when every worker is stuck the call fails open at once with
``busy`` instead of queueing behind them: a stuck index costs nothing per request beyond the pool. The
workers are daemon threads, started up front: a query stuck for good must not keep the process from exiting
(``concurrent.futures.ThreadPoolExecutor`` joins its threads at exit), and the first request must not pay
for starting a thread.

Reasons: ``disabled`` (switched off by config or the admin command), ``busy`` (no free worker), ``timeout``,
``error`` (the index or encoder raised, or the fault drill said so), ``empty`` (no entry known at ``as_of``).

Fault drills: ``cfg.fault`` (or ``set_fault`` at runtime) makes every query sleep ``delay_ms`` and fail with
probability ``error_rate``, inside the worker, exactly where a slow or broken index would.

Two steps: ``begin`` starts a retrieval and returns a ``Lookup`` at once; the caller collects the result later,
waiting at most the timeout from then on (``result``, or ``result_async``, which awaits the worker's future with
a timeout, so the event loop is never blocked and an overrunning query is abandoned, not cancelled). A result
ready by then is taken without a round trip through the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dualhrq.config import PatternsConfig
from dualhrq.errors import ConfigurationError, DataError, HRMError, ModelLoadError
from dualhrq.patterns.context import pattern_context
from dualhrq.patterns.encoder import PatternEncoder
from dualhrq.patterns.library import PatternLibrary

log = logging.getLogger(__name__)

REASONS = ("timeout", "busy", "tripped", "error", "empty", "disabled")


class InjectedFault(HRMError):
    """Raised by the fault drill in place of a real index failure."""


@dataclass(frozen=True)
class RetrievalResult:
    pattern_context: np.ndarray  # [B, K, P] float32
    mask: np.ndarray  # [B, K] float32, 1 = valid neighbour
    reason: str | None  # None when patterns were used, else one of REASONS
    used: np.ndarray  # [B] int: valid neighbours per query

    @property
    def fail_open(self) -> bool:
        return self.reason is not None


class Retriever:
    """Encode pattern features, query the library as of a time, and return the model's pattern context.

    After TRIP_AFTER lookups in a row time out, lookups fail open at once (``tripped``) for TRIP_PAUSE_S, then
    one is let through again: while the index is slow, a request pays nothing for it instead of the timeout.
    """

    TRIP_AFTER = 3
    TRIP_PAUSE_S = 2.0  # probes stay a small share of requests even at low rates (1 in 30 at 15 req/s)

    def __init__(self, library: PatternLibrary, encoder: PatternEncoder, cfg: PatternsConfig, pattern_dim: int,
                 k: int, seed: int = 0) -> None:
        if encoder.embed_dim != library.dim:
            raise ModelLoadError(f"patterns.embed_dim: the encoder embeds to {encoder.embed_dim} dims but the library "
                                 f"holds {library.dim}")
        self.library = library
        self.encoder = encoder
        self.cfg = cfg
        self.pattern_dim = pattern_dim
        self.k = k
        self.enabled = cfg.enabled
        self.set_fault(cfg.fault.delay_ms, cfg.fault.error_rate)
        self._rng = random.Random(seed)
        self._free_workers = threading.BoundedSemaphore(cfg.pool_size)
        self._pool = _DaemonPool(cfg.pool_size, "patterns")
        self._timeouts_in_row = 0
        self._tripped_until = 0.0  # time.monotonic(); lookups before it fail open at once

    def set_fault(self, delay_ms: float, error_rate: float) -> None:
        """Fault drill: every query sleeps ``delay_ms`` and raises with probability ``error_rate`` (0, 0: off)."""
        if delay_ms < 0:
            raise ConfigurationError(f"patterns.fault.delay_ms: must be >= 0, got {delay_ms}")
        if not 0 <= error_rate <= 1:
            raise ConfigurationError(f"patterns.fault.error_rate: must be in [0, 1], got {error_rate}")
        self._delay_s = delay_ms / 1000.0
        self._error_rate = error_rate

    def close(self) -> None:
        """Stop the workers once their current query ends; later calls fail open as ``disabled``."""
        self.enabled = False
        self._pool.shutdown()

    # ------------------------------------------------------------ the calls

    def retrieve(self, pattern_features: np.ndarray, as_of: int | np.ndarray,
                 timeout_s: float | None = None) -> RetrievalResult:
        """Pattern context for B queries, or a fail-open result, within ``timeout_s`` (default cfg.timeout_ms)."""
        return self.begin(pattern_features, as_of).result(timeout_s)

    def begin(self, pattern_features: np.ndarray, as_of: int | np.ndarray) -> Lookup:
        """Start a retrieval and return at once; the caller may do other work, then collects the result,
        waiting at most the timeout from then on. A lookup of fixed cost is answered here and now."""
        batch = self._batch_size(pattern_features)
        return Lookup(self, self._inline(pattern_features, as_of, batch) or self._submit(pattern_features, as_of,
                                                                                          batch), batch)

    # ------------------------------------------------------------ inside

    def _timeout(self, timeout_s: float | None) -> float:
        t = self.cfg.timeout_ms / 1000.0 if timeout_s is None else timeout_s
        if not t > 0:
            raise ConfigurationError(f"timeout_s: must be > 0, got {t}")
        return t

    def _batch_size(self, pattern_features: np.ndarray) -> int:
        shape = np.shape(pattern_features)
        if len(shape) != 2:
            raise DataError(f"pattern_features: expected shape [B, F], got {list(shape)}")
        return shape[0]

    def _inline(self, pattern_features: np.ndarray, as_of: int | np.ndarray, batch: int) -> RetrievalResult | None:
        """The lookup on the caller's thread when its cost is fixed: one query, the library's exact search over
        a few thousand entries (dearer than the hand-off to a worker and back, measured, it is not) and no
        update holding the index. None: a worker must search (a graph search, an update, or a fault drill, which stands
        for an index whose time cannot be bounded)."""
        if not (batch == 1 and self.enabled and self.library.bounded and not self._delay_s and not self._error_rate
                and isinstance(as_of, (int, np.integer))):
            return None
        try:
            found = self.library.try_pattern_context(self.encoder.encode(pattern_features), int(as_of),
                                                     self.pattern_dim, self.k)
        except Exception:  # noqa: BLE001 - as on a worker: any failure of the index fails open
            log.warning("pattern retrieval failed; failing open to regime-only", exc_info=True)
            return self._fail_open(batch, "error")
        return None if found is None else self._answered(self._found(*found))

    def _submit(self, pattern_features: np.ndarray, as_of: int | np.ndarray,
                batch: int) -> concurrent.futures.Future[RetrievalResult] | RetrievalResult:
        """A running worker's future, or an immediate fail-open result (disabled, busy)."""
        if not self.enabled:
            return self._fail_open(batch, "disabled")
        if time.monotonic() < self._tripped_until:
            return self._fail_open(batch, "tripped")
        if not self._free_workers.acquire(blocking=False):
            return self._fail_open(batch, "busy")
        future = self._pool.submit(self._work, pattern_features, as_of, batch)
        future.add_done_callback(lambda _: self._free_workers.release())
        return future

    def _work(self, pattern_features: np.ndarray, as_of: int | np.ndarray, batch: int) -> RetrievalResult:
        try:
            if self._delay_s:
                time.sleep(self._delay_s)
            if self._error_rate and self._rng.random() < self._error_rate:
                raise InjectedFault("fault drill: injected pattern index error")
            context, mask = pattern_context(self.library, self.encoder, pattern_features, as_of, self.pattern_dim,
                                            self.k)
        except InjectedFault as e:
            log.debug("%s; failing open to regime-only", e)
            return self._fail_open(batch, "error")
        except Exception:  # noqa: BLE001 - any failure of the index must fail open, never reach the signal
            log.warning("pattern retrieval failed; failing open to regime-only", exc_info=True)
            return self._fail_open(batch, "error")
        return self._found(context, mask)

    @staticmethod
    def _found(context: np.ndarray, mask: np.ndarray) -> RetrievalResult:
        used = mask.sum(axis=1).astype(np.int64)
        return RetrievalResult(context, mask, None if used.any() else "empty", used)

    def _timed_out(self, batch: int) -> RetrievalResult:
        # Races between threads here only shift when the breaker trips by one lookup: no lock needed.
        self._timeouts_in_row += 1
        if self._timeouts_in_row >= self.TRIP_AFTER:
            self._tripped_until = time.monotonic() + self.TRIP_PAUSE_S
            self._timeouts_in_row = self.TRIP_AFTER - 1  # after the pause, one more timeout trips it again
        return self._fail_open(batch, "timeout")

    def _answered(self, result: RetrievalResult) -> RetrievalResult:
        self._timeouts_in_row = 0
        return result

    def _fail_open(self, batch: int, reason: str) -> RetrievalResult:
        return RetrievalResult(pattern_context=np.zeros((batch, self.k, self.pattern_dim), np.float32),
                               mask=np.zeros((batch, self.k), np.float32), reason=reason,
                               used=np.zeros(batch, np.int64))


class Lookup:
    """A retrieval under way (`Retriever.begin`): collect it once with `result` or `result_async`."""

    def __init__(self, retriever: Retriever, started: concurrent.futures.Future[RetrievalResult] | RetrievalResult,
                 batch: int) -> None:
        self._retriever, self._started, self._batch = retriever, started, batch

    @property
    def answered(self) -> RetrievalResult | None:
        """The result if it came without a worker (searched on the caller's thread, or failed open at once);
        None: `result` must wait for one."""
        started = self._started
        return started if isinstance(started, RetrievalResult) else None

    def result(self, timeout_s: float | None = None) -> RetrievalResult:
        """The result, waiting at most ``timeout_s`` (default cfg.timeout_ms); past it, a fail-open ``timeout``."""
        timeout = self._retriever._timeout(timeout_s)
        started = self._started
        if isinstance(started, RetrievalResult):
            return started
        try:
            return self._retriever._answered(started.result(timeout=timeout))
        except concurrent.futures.TimeoutError:
            return self._retriever._timed_out(self._batch)

    async def result_async(self, timeout_s: float | None = None) -> RetrievalResult:
        """``result`` without blocking the loop: an overrunning query is abandoned (not cancelled)."""
        timeout = self._retriever._timeout(timeout_s)
        started = self._started
        if isinstance(started, RetrievalResult):
            return started
        if started.done():  # finished while the caller worked: no round trip through the loop
            return self._retriever._answered(started.result())
        waiter = asyncio.wrap_future(started)
        done, _ = await asyncio.wait({waiter}, timeout=timeout)
        if not done:
            waiter.cancel()  # detaches the loop from the abandoned worker; the query itself runs on
            return self._retriever._timed_out(self._batch)
        return self._retriever._answered(waiter.result())


class _DaemonPool:
    """A fixed set of daemon worker threads fed by a queue (the retriever bounds what is queued)."""

    def __init__(self, size: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[concurrent.futures.Future, Callable[..., Any], tuple] | None] = (
            queue.SimpleQueue())
        self._size = size
        for i in range(size):
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True).start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((future, fn, args))
        return future

    def shutdown(self) -> None:
        for _ in range(self._size):
            self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001 - handed to whoever waits on the future
                future.set_exception(e)
