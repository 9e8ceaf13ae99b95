"""The one inference thread: a bounded queue in front of the engine, drained in micro-batches.

The event loop submits one row per request and gets an asyncio future back; a full queue refuses at once
(`Overloaded`) instead of queueing without bound. The thread takes the first waiting row, then waits up to
`max_wait_us` for more only while more are known to be on the way (`upstream()`: requests still in features
or retrieval), so a lone request never pays the batching window. Results go back to the loop with
`call_soon_threadsafe`; a future the loop already gave up on (deadline) is skipped, never resolved twice.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dualhrq.config import ActConfig, ServeConfig
from dualhrq.errors import InferenceError
from dualhrq.export.engines import Engine
from dualhrq.model.halting import inference_bounds
from dualhrq.runtime.act import ActResult, run_act

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """The inference queue is full."""


class Expired(Exception):
    """The request's deadline passed while it waited in the queue; it never reached the engine."""


@dataclass
class RowResult:
    outputs: dict[str, np.ndarray]  # the heads for this row (no batch axis)
    segments: int
    halted_by_q: bool
    queue_s: float  # submit -> its batch started
    engine_s: float  # the batch's whole ACT loop
    batch_size: int


@dataclass
class _Job:
    inputs: dict[str, np.ndarray]  # non-carry graph inputs, batch axis of 1
    future: asyncio.Future[RowResult]
    loop: asyncio.AbstractEventLoop
    submitted: float
    deadline: float | None  # perf_counter time after which nobody waits for the answer


class Batcher:
    """Reads ``act`` (the ACT loop) and ``serve.max_batch``, ``serve.max_wait_us``, ``serve.queue_max``."""

    def __init__(self, engine: Engine, act: ActConfig, serve: ServeConfig,
                 initial_carry: Callable[[int], tuple[np.ndarray, np.ndarray]], *,
                 upstream: Callable[[], int] = lambda: 0,
                 on_batch: Callable[[int, float], None] = lambda size, seconds: None) -> None:
        self.engine, self.act = engine, act
        self.max_batch = min(serve.max_batch, engine.max_batch)
        self.max_wait_s = serve.max_wait_us / 1e6
        self._initial_carry = initial_carry
        self._upstream = upstream
        self._on_batch = on_batch
        self._queue: queue.Queue[_Job] = queue.Queue(maxsize=serve.queue_max)
        self._engine_lock = threading.Lock()  # the engine runs one batch at a time: this thread's or `try_run`'s
        self._solo_s: collections.deque[float] = collections.deque([0.0], maxlen=64)  # recent batch-1 ACT loops
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"inference-{engine.name}", daemon=True)

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> Batcher:
        self._thread.start()
        return self

    def submit(self, inputs: dict[str, np.ndarray], deadline: float | None = None) -> asyncio.Future[RowResult]:
        """From the event loop: queue one row; raises Overloaded at once when the queue is full."""
        loop = asyncio.get_running_loop()
        job = _Job(inputs, loop.create_future(), loop, time.perf_counter(), deadline)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise Overloaded(f"inference queue full ({self._queue.maxsize} waiting)") from None
        return job.future

    def try_run(self, inputs: dict[str, np.ndarray], deadline: float | None = None) -> RowResult | None:
        """One row's ACT loop on the caller's thread when the engine is idle, nothing is queued and the run
        surely ends well before ``deadline`` (None otherwise: submit it). A lone request then pays no hand-off
        to the inference thread and back; the caller's thread is busy for the run."""
        if deadline is not None and deadline - time.perf_counter() < 2 * max(self._solo_s):
            return None  # only the queue can answer `deadline_exceeded` the moment the deadline passes
        if self._queue.qsize() or not self._engine_lock.acquire(blocking=False):
            return None
        try:
            result, _, engine_s = self._act(inputs, 1)
        finally:
            self._engine_lock.release()
        self._ran(1, engine_s)
        return _row(result, 0, 0.0, engine_s, 1)

    def run_here(self, inputs: dict[str, np.ndarray]) -> ActResult:
        """The ACT loop on the caller's thread, for offline use (replay) of a batcher never started."""
        if self._thread.is_alive():
            raise RuntimeError("run_here is for a batcher that was never started: the inference thread owns "
                               "the engine")
        return run_act(self.engine, inputs, self._initial_carry(len(inputs["h_tokens"])), self.act)

    def warm(self, row: dict[str, np.ndarray], rounds: int = 3) -> None:
        """Run the engine at every batch size it can be given, before start(): first calls are slow (graph
        optimisation, allocation, the engine's buffers per batch size)."""
        if self._thread.is_alive():
            raise RuntimeError("warm before start(); the inference thread owns the engine")
        for b in range(1, self.max_batch + 1):
            feeds = {k: np.repeat(v, b, axis=0) for k, v in row.items()}
            feeds["z_H"], feeds["z_L"] = self._initial_carry(b)
            for _ in range(rounds):
                start = time.perf_counter()
                self.engine.run(feeds)
                if b == 1:  # an ACT loop runs at most `limit` segments
                    self._solo_s.append((time.perf_counter() - start) * inference_bounds(self.act)[1])

    def stop(self, timeout: float = 5.0) -> bool:
        """Finish what is queued (within `timeout`), then end the thread. False when the thread is still
        running a batch after `timeout`: the engine is still in use then."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        while True:  # whatever is left after the timeout gets an error, not silence
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            _deliver(job, error=InferenceError("engine stopped before this request ran"))
        return not self._thread.is_alive()

    # ------------------------------------------------------------ inference thread

    def _serve(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=0.05)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            live = []
            jobs = self._gather(first)
            now = time.perf_counter()  # after the gather, which may wait up to max_wait_us
            for j in jobs:
                if j.deadline is not None and now >= j.deadline:
                    _deliver(j, error=Expired("deadline passed while queued"))
                elif not j.future.done():
                    live.append(j)
            if not live:
                continue
            try:
                results = self._run_batch(live)
            except Exception as e:  # the engine failed: every row of the batch gets an error reply
                log.exception("batch of %d failed", len(live))
                err = e if isinstance(e, InferenceError) else InferenceError(f"{type(e).__name__}: {e}")
                for j in live:
                    _deliver(j, error=err)
                continue
            for j, r in zip(live, results):
                _deliver(j, result=r)

    def _gather(self, first: _Job) -> list[_Job]:
        jobs = [first]
        until = time.perf_counter() + self.max_wait_s
        while len(jobs) < self.max_batch:
            try:
                jobs.append(self._queue.get_nowait())
                continue
            except queue.Empty:
                pass
            left = until - time.perf_counter()
            if left <= 0 or self._upstream() == 0:
                break
            try:
                jobs.append(self._queue.get(timeout=left))
            except queue.Empty:
                break
        return jobs

    def _run_batch(self, jobs: list[_Job]) -> list[RowResult]:
        b = len(jobs)
        if b == 1:  # a lone request (the usual case at low load): its own arrays, no copy
            inputs = jobs[0].inputs
        else:
            inputs = {k: np.concatenate([j.inputs[k] for j in jobs]) for k in jobs[0].inputs}
        with self._engine_lock:  # held by `try_run` only for a lone request's run
            result, start, engine_s = self._act(inputs, b)
        self._ran(b, engine_s)
        return [_row(result, i, start - j.submitted, engine_s, b) for i, j in enumerate(jobs)]

    def _act(self, inputs: dict[str, np.ndarray], b: int) -> tuple[ActResult, float, float]:
        """The ACT loop of ``b`` rows, the engine lock held by the caller: (result, its start, engine seconds)."""
        start = time.perf_counter()
        result = run_act(self.engine, inputs, self._initial_carry(b), self.act)
        return result, start, time.perf_counter() - start

    def _ran(self, b: int, engine_s: float) -> None:
        if b == 1:  # what a lone request costs: try_run's deadline test reads it
            self._solo_s.append(engine_s)
        self._on_batch(b, engine_s)


def _row(result: ActResult, i: int, queued_s: float, engine_s: float, batch: int) -> RowResult:
    return RowResult({k: v[i] for k, v in result.outputs.items()}, int(result.segments[i]),
                     bool(result.halted_by_q[i]), queued_s, engine_s, batch)


def _deliver(job: _Job, result: RowResult | None = None, error: BaseException | None = None) -> None:
    def settle() -> None:
        if job.future.done():  # the request already answered (deadline) or was cancelled
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)  # type: ignore[arg-type]

    try:
        job.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass
