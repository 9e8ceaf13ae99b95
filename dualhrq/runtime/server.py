"""The server: asyncio + a ZeroMQ ROUTER socket speaking protocol v1 (docs/PROTOCOL.md).

A reader on the socket's descriptor turns each message into a task; each task sends exactly one reply. The
loop itself only decodes, validates and routes: features run in a thread when they cost more than ~0.2 ms and
other requests are in flight, retrieval on the loop when its cost is fixed, else on the retriever's bounded
pool with its timeout (failing open), the engine on the one inference thread behind the batcher's bounded
queue. Replies leave with ROUTER_MANDATORY and without blocking: a reply ZeroMQ cannot deliver (peer gone, its
queue full) is counted and dropped, never waited on.

Per signal: decode+validate -> features -> retrieval -> queue -> engine (ACT) -> compliance gate -> reply,
with `timing_us` for each stage. Retrieval starts once the features are computed: on the loop's thread when its
cost is fixed (a small library's exact search), else on the retriever's pool, its stage then the wait for it, at
most patterns.timeout_ms. A deadline
(`deadline_ms` from receipt) answers `deadline_exceeded` the moment it passes, whatever stage the request is in.

An `append` extends its stream's window (dualhrq.runtime.streams) and computes only the new bars' features. A
request alone in flight, with nothing waiting in the socket and the engine idle, runs the engine on the loop's
thread (`serve.inline_engine`): no hand-off to the inference thread and back. It does so only when its deadline
leaves twice the recent batch-1 engine time, so that the queue can still answer `deadline_exceeded` on time;
requests that arrive meanwhile wait in the socket for at most that one run, then batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

from dualhrq.compliance.gate import ComplianceGate, GateDecision, MarketSnapshot
from dualhrq.config import CurveConfig, ServeConfig
from dualhrq.data.market_rules import RULES_VERSION
from dualhrq.inputs.stream import Resync
from dualhrq.runtime import protocol as p
from dualhrq.runtime.admin import Admin, Relay
from dualhrq.runtime.backend import BackendKeys, BrokerLink, bind
from dualhrq.runtime.batcher import Expired, Overloaded, RowResult
from dualhrq.runtime.heap import freeze_heap
from dualhrq.runtime.host import HostHooks, ModelHost, Prepared
from dualhrq.runtime.hosting import Hosting, Loader
from dualhrq.runtime.metrics import ServerMetrics
from dualhrq.runtime.security import CurveServer
from dualhrq.runtime.streams import Stream, Streams

if TYPE_CHECKING:
    from dualhrq.data.windows import SampleBars
    from dualhrq.patterns.retriever import Lookup

log = logging.getLogger(__name__)

GIL_SWITCH_S = 0.0005
# How often the loop looks at the socket whatever its descriptor says: a bound on any wake-up the edge-triggered
# descriptor missed (an operation on the socket can take a message's edge).
RESCAN_S = 0.05

# The retriever's "busy" (every worker stuck) and "tripped" (recent lookups timed out) are timeouts on the wire.
_REPLY_REASON = {"busy": "timeout", "tripped": "timeout"}


class Server:
    """Serve one bundle on `serve.bind` (or, as a worker, on a broker's backend via `connect`, registered as
    `slot`: by default this host and process; a tcp:// backend needs `backend_keys`)."""

    def __init__(self, serve: ServeConfig, loader: Loader, bundle: str, *, gate: ComplianceGate | None = None,
                 connect: str | None = None, control: Relay | None = None, slot: str = "",
                 backend_keys: BackendKeys | None = None) -> None:
        self.serve = serve
        self.metrics = ServerMetrics()
        self.endpoint = ""  # the bound (or connected) address once started
        self.ready = False
        self._gate = gate if gate is not None else ComplianceGate()
        slot = slot or f"{socket.gethostname()}-{os.getpid()}"
        self._link = BrokerLink(connect, slot, backend_keys) if connect else None
        # The clients' CURVE ends at the client-facing socket: a worker connected to a broker's backend uses the
        # backend's own keys instead (BrokerLink), or the handshake would never complete and no request arrive.
        self._curve = CurveServer(CurveConfig() if connect else serve.curve)
        self._upstream = 0  # signals past decode and not yet queued: the batcher's hint to wait for more
        self._in_flight = 0  # taken from the socket and not yet answered
        self._running = 0  # of those, whose task has started: what the in-flight limit admits by, in order
        self._tasks: set[asyncio.Task] = set()
        self._stopping = asyncio.Event()
        self._started = time.monotonic()
        self._features_pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="features")
        self._streams = Streams(serve.sessions)
        hooks = HostHooks(upstream=lambda: self._upstream, on_batch=self.metrics.observe_batch)
        self._hosting = Hosting(loader, bundle, hooks, self._stopping, self._swapped)
        # `control`: a worker's relay of state-changing admin commands to its siblings
        self._admin = Admin(serve, self._gate, self._hosting, control, self._curve.admin_keys, self.stats)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ctx: zmq.Context | None = None
        # A plain socket the loop watches through its descriptor: every receive and send is a non-blocking call,
        # not a future, a poller and a timer per message as zmq.asyncio's poll makes them.
        self._sock: zmq.Socket | None = None
        self._draining = False  # a drain of the socket is scheduled on the loop
        self._copy = not self._curve.enabled  # CURVE needs the frames themselves to read each one's User-Id

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load, verify and warm the model (off the loop), then bind: nothing is answered before it is ready.
        An address or metrics port that cannot work is a ConfigurationError before the load, not after it.
        Returns without becoming ready when stopped before a bundle loaded (see `Hosting.first`)."""
        self._loop = asyncio.get_running_loop()
        # The loop competes for the GIL with the retrieval, feature and inference threads: hand it over more
        # often than the default 5 ms, so that a waiting loop (or retrieval) is never held up long.
        sys.setswitchinterval(GIL_SWITCH_S)
        if not self._link:
            self._probe_bind()
        self.metrics.watch_queue(lambda: self._hosting.host.batcher.depth if self._hosting.host else 0)
        self.metrics.in_flight.set_function(lambda: self._in_flight)
        if self.serve.metrics_port:
            self.metrics.serve_http(self.serve.metrics_port, ready=lambda: self.ready)
        host = await self._hosting.first()
        if host is None:  # stopped before any bundle loaded
            return
        freeze_heap(collect=True)  # before any request: the collection's pause is the start's
        self._ctx = zmq.Context()
        # A worker's one peer is the broker: a DEALER, whose replies carry the broker's tags back unchanged.
        sock = self._ctx.socket(zmq.DEALER if self._link else zmq.ROUTER)
        if not self._link:
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.LINGER, int(self.serve.drain_timeout_s * 1000))
        self._curve.secure(self._ctx, sock)
        if self._link:
            self._link.attach(sock, self._waiting)
            self.endpoint = self._link.address
        else:
            self._bind(sock)
            self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._sock = sock
        self.ready = True
        self.metrics.ready.set(1)
        log.info("serving %s on %s (ready)", host.name, self.endpoint,
                 extra={"event": "ready", "model": host.name, "endpoint": self.endpoint})

    async def run(self, handle_signals: bool = True) -> int:
        """Start, serve until stop() (or SIGTERM/SIGINT), drain, and return the exit code. A start that fails
        (a setting that cannot work) is drained too, then raised."""
        self._loop = asyncio.get_running_loop()
        if handle_signals:  # before loading, so a signal while loading also ends in a clean exit
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self.stop)
        relays = await self._admin.join(self._stopping)
        beats: asyncio.Task | None = None
        try:
            if not self._stopping.is_set():  # stopped while waiting for the broker: nothing to load
                await self.start()
            if self.ready:  # not when stopped before a bundle loaded
                if self._link:
                    beats = asyncio.create_task(self._link.run())
                await self._receive()
            log.info("stopping: no new requests; draining %d in flight", len(self._tasks))
        finally:
            if relays is not None:
                relays.cancel()  # no relayed reload may begin during the drain
            await self._drain()  # heartbeats go on meanwhile: the broker must not count this worker lost
            if beats is not None:
                beats.cancel()
        return 0

    def _probe_bind(self) -> None:
        """Bind serve.bind and let go at once: an address in use or malformed fails before the load. The real
        socket binds only once ready, so that no request waits in it before (the probe's context is ended,
        which closes its listener, before the load begins)."""
        ctx = zmq.Context()
        try:
            probe = ctx.socket(zmq.ROUTER)
            probe.setsockopt(zmq.LINGER, 0)
            try:
                self._bind(probe)
            finally:
                probe.close()
        finally:
            ctx.term()

    def _bind(self, sock: zmq.Socket) -> None:
        bind(sock, self.serve.bind, "serve.bind")

    def stop(self) -> None:
        """Stop receiving; what is in flight is answered (bounded by serve.drain_timeout_s). Thread-safe, and a
        no-op once the server has stopped."""
        if self._loop is None:
            self._stopping.set()  # before start: nothing runs yet, run() will return at once
            return
        try:
            self._loop.call_soon_threadsafe(self._stopping.set)
        except RuntimeError:  # its loop is closed: run() has returned already
            pass

    async def _drain(self) -> None:
        self.ready = False
        if self._link:
            self._link.leave()
        self.metrics.ready.set(0)
        await self._settle()
        # A reload still loading ends first (a relayed one is no request's task: the settle did not wait for it);
        # one asked for later is refused. The old host such a reload replaced retires in a second settle.
        host = await self._hosting.take()
        await self._settle()
        if host is not None:
            await asyncio.to_thread(host.close, self.serve.drain_timeout_s)
        self._features_pool.shutdown(wait=False)
        if self._sock is not None:
            sock, self._sock = self._sock, None  # later replies count as undeliverable
            sock.close()  # lingers up to drain_timeout_s so the last replies leave
        self._curve.stop()
        if self._ctx is not None:
            self._ctx.term()
        self.metrics.stop_http()
        log.info("stopped")

    async def _settle(self) -> None:
        """Wait for every task, those started meanwhile too (a reload's retirement of the old host), within
        serve.drain_timeout_s; then cancel the rest: each request still sends its one reply (`internal`,
        shutting down) as it unwinds."""
        deadline = time.monotonic() + self.serve.drain_timeout_s
        while (pending := [t for t in self._tasks if not t.done()]) and (left := deadline - time.monotonic()) > 0:
            await asyncio.wait(pending, timeout=left)
        late = [t for t in self._tasks if not t.done()]
        for t in late:
            t.cancel()
        if late:
            await asyncio.wait(late, timeout=1.0)

    # ------------------------------------------------------------ receiving and replying

    async def _receive(self) -> None:
        """Take requests as they arrive until stop(): the socket's descriptor wakes the loop."""
        assert self._sock is not None and self._loop is not None
        fd = self._sock.getsockopt(zmq.FD)
        self._loop.add_reader(fd, self._take)
        self._take()  # what arrived before the reader was there
        try:
            while not self._stopping.is_set():
                await asyncio.sleep(RESCAN_S)
                self._waiting()
        finally:
            self._loop.remove_reader(fd)

    def _take(self) -> None:
        """Start a task for every message waiting. The descriptor is edge-triggered: it signals a change, not
        each message, so every wake-up takes all that is there."""
        self._draining = False
        sock = self._sock
        if sock is None or self._stopping.is_set():
            return
        for _ in range(1000):  # then let the tasks run, and come back for the rest
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=self._copy)
            except zmq.Again:
                return
            if self._link and self._link.control(frames):
                continue
            # In flight from now, not from when its task starts: one taken in the same drain must not look
            # alone to the one before it.
            self._in_flight += 1
            self._spawn(self._handle(frames, time.perf_counter()))
        self._drain_later()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` as a task the drain waits for."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _drain_later(self) -> None:
        if not self._draining and self._loop is not None:
            self._draining = True
            self._loop.call_soon(self._take)

    def _waiting(self) -> bool:
        """Whether messages wait in the socket. NOTE: reading EVENTS (a send does too) may take the descriptor's
        edge for a message that arrived meanwhile, so a drain is scheduled whenever one waits: none is left
        until the next message."""
        sock = self._sock
        if sock is None:
            return False
        waiting = bool(sock.getsockopt(zmq.EVENTS) & zmq.POLLIN)
        if waiting:
            self._drain_later()
        return waiting

    def _send(self, envelope: list, body: bytes) -> None:
        if self._sock is None:  # closed: shutting down
            self.metrics.undeliverable.inc()
            return
        try:
            self._sock.send_multipart([*envelope, body], zmq.NOBLOCK, copy=self._copy)
        except zmq.ZMQError:
            # EHOSTUNREACH (peer gone, ROUTER_MANDATORY), EAGAIN (its queue is full) or the socket closing:
            # drop, never block.
            self.metrics.undeliverable.inc()
        self._waiting()

    async def _handle(self, frames: list, t0: float) -> None:
        self._running += 1
        kind, reply = "unknown", None
        try:
            body = frames[-1] if self._copy else frames[-1].bytes
            user = None if self._copy else frames[-1].get("User-Id")
            kind, reply = await self._answer(body, user, t0)
        except asyncio.CancelledError:
            reply = p.ErrorReply(id=None, code="internal", message="server shutting down")
        except Exception:  # noqa: BLE001 - whatever happened, the request still gets its one reply
            log.exception("unexpected error answering a request")
            reply = p.ErrorReply(id=None, code="internal", message="internal error")
        finally:
            self._in_flight -= 1
            self._running -= 1
        self._send(frames[:-1], p.encode(reply))
        # The metrics after the send: the gateway is not kept waiting for them.
        self.metrics.stage_seconds.labels("total").observe(time.perf_counter() - t0)
        if isinstance(reply, p.SignalReply):
            self.metrics.observe_stages(reply.timing_us)
        code = reply.code if isinstance(reply, p.ErrorReply) else "ok"
        self.metrics.requests.labels(kind, code).inc()

    async def _answer(self, body: bytes, user: str | None, t0: float) -> tuple[str, p.Reply]:
        try:
            req = p.decode_request(body, self.serve.max_body_bytes)
        except p.ProtocolError as e:
            return e.kind or "unknown", e.reply()
        kind = type(req).__struct_config__.tag
        try:
            if isinstance(req, (p.Signal, p.Append)):
                return kind, await self._signal(req, t0)
            if isinstance(req, p.Ping):
                return kind, self._pong(req)
            return kind, await self._admin.answer(req, user)
        except p.ProtocolError as e:
            e.request_id = req.id
            return kind, e.reply()
        except asyncio.CancelledError:  # only the drain cancels a request: it still gets its reply
            return kind, p.ErrorReply(id=req.id, code="internal", message="server shutting down")
        except Exception as e:  # noqa: BLE001 - reported to the client as `internal`, logged in full here
            log.exception("request %s failed", req.id)
            return kind, p.ErrorReply(id=req.id, code="internal", message=f"{type(e).__name__}: {e}")

    # ------------------------------------------------------------ ping

    def _pong(self, req: p.Ping) -> p.Pong:
        host = self._hosting.host
        coarse, fine = host.needs if host else (0, 0)
        return p.Pong(id=req.id, model=host.name if host else "", ready=self.ready and host is not None,
                      uptime_s=round(time.monotonic() - self._started, 3), needs=p.Needs(coarse, fine),
                      rules_version=RULES_VERSION, workers=self._workers(),
                      timeframe=host.inputs.timeframe if host else "", coarse_rule=host.inputs.coarse_rule if host else "")

    def _workers(self) -> int:
        """Engine workers alive: this one alone, or as many as the broker last announced."""
        return self._link.workers if self._link else 1

    # ------------------------------------------------------------ signal

    async def _signal(self, req: p.BarRequest, t0: float) -> p.Reply:
        if self._running > self.serve.max_in_flight:
            raise p.ProtocolError("overloaded", f"more than {self.serve.max_in_flight} requests in flight")
        host = self._hosting.host
        if host is None:
            raise p.ProtocolError("overloaded", "no model loaded (shutting down); retry elsewhere or later")
        deadline_ms = req.deadline_ms or self.serve.default_deadline_ms
        if not deadline_ms:
            return await self._pipeline(req, host, t0, None)
        deadline = t0 + deadline_ms / 1000.0
        left = deadline - time.perf_counter()
        if left <= 0:  # passed while it waited for its turn: do nothing of it (an append would extend its stream)
            raise self._exceeded(deadline_ms)
        # In this task, not wait_for's: a task of its own would cost a pass of the loop before it starts.
        timeout = asyncio.timeout(left)
        try:
            async with timeout:
                return await self._pipeline(req, host, t0, deadline)
        except TimeoutError:
            if timeout.expired():
                raise self._exceeded(deadline_ms) from None
            raise

    @staticmethod
    def _exceeded(deadline_ms: float) -> p.ProtocolError:
        """Made only when a deadline passes: the request path does not build an error per request."""
        return p.ProtocolError("deadline_exceeded", f"no answer within deadline_ms={deadline_ms:g}")

    async def _pipeline(self, req: p.BarRequest, host: ModelHost, t0: float, deadline: float | None) -> p.SignalReply:
        host.acquire()
        self._upstream += 1
        queued = False
        try:
            if isinstance(req, p.Signal) and req.session is not None:
                self._streams.drop(req.session)  # whatever becomes of this window, the old one is stale now
            stream = self._stream(req, host) if isinstance(req, p.Append) else None
            bars = host.extend(stream.window, req) if stream else host.window(req)  # the one validation
            t_decode = time.perf_counter()
            # Retrieval starts after the features, not beside them: the features are a few compiled calls, and
            # a worker started first takes the GIL at each of them (measured on 2 cores: features 0.41 ms
            # instead of 0.23 ms on the tiny model, for no shorter wait after them).
            prepared = await self._features(req, host, bars, stream)
            t_features = time.perf_counter()
            # a lookup of fixed cost is answered here and now
            lookup = self._lookup(host, prepared.key, bars.as_of)
            context, mask, used, reason = await self._retrieved(host, lookup)
            t_retrieval = time.perf_counter()
            # Not upstream any more before it is queued: the inference thread must not wait for this one.
            self._upstream -= 1
            queued = True
            row = await self._run(host, {**prepared.inputs, "pattern_context": context, "pattern_mask": mask},
                                  deadline)
        finally:
            if not queued:
                self._upstream -= 1
            host.release()
        stages = {"decode": t_decode - t0, "features": t_features - t_decode, "retrieval": t_retrieval - t_features,
                  "queue": row.queue_s, "engine": row.engine_s}
        return self._signal_reply(req, host, row, prepared.state, used, reason, stages, t0)

    async def _features(self, req: p.BarRequest, host: ModelHost, bars: SampleBars,
                        stream: Stream | None) -> Prepared:
        """The graph inputs but the pattern context, and the retrieval key; a signal that names a session opens
        its stream with them."""
        if stream is not None:  # only the new bars' rows, on the loop: a stream's appends extend it in order
            return host.prepare_stream(stream.window, req.instrument, stream.timeframe)
        assert isinstance(req, p.Signal)
        key = host.key(bars)
        # Alone in flight, nothing waits on the loop, so the hand-off to a thread and back is pure cost
        # (~0.5 ms measured at 1 in flight); with company, dear features leave the loop to the others.
        if host.features_inline or self._in_flight == 1:
            prepared = host.prepare(bars, key, req.instrument, req.timeframe)
        else:
            prepared = await asyncio.get_running_loop().run_in_executor(
                self._features_pool, host.prepare, bars, key, req.instrument, req.timeframe)
        if req.session is not None:
            window = host.open_stream(bars, prepared, self.serve.sessions)
            self._streams.open(req.session, req.instrument, req.timeframe, window, host)
        return prepared

    def _alone(self) -> bool:
        """Whether this is the only request in flight and none waits in the socket (if one does, this one
        queues, so that they are batched with it or refused as overloaded, instead of each waiting for the one
        before it on the loop's thread)."""
        return self._in_flight == 1 and not self._waiting()

    def _stream(self, req: p.Append, host: ModelHost) -> Stream:
        try:
            return self._streams.get(req.session, req.instrument, host)
        except Resync as e:
            raise p.ProtocolError("resync_required", str(e), "session", req.id) from None

    async def _run(self, host: ModelHost, inputs: dict[str, np.ndarray], deadline: float | None) -> RowResult:
        """The engine's answer for one row: on this thread when the request is alone and the engine idle (no
        hand-off, no batching window to wait for), else through the batcher's queue."""
        if self.serve.inline_engine and self._alone():
            row = host.batcher.try_run(inputs, deadline)
            if row is not None:
                if deadline is not None and time.perf_counter() > deadline:
                    raise p.ProtocolError("deadline_exceeded", "deadline passed while the engine ran")
                return row
        try:
            future = host.batcher.submit(inputs, deadline)
        except Overloaded as e:
            raise p.ProtocolError("overloaded", str(e)) from None
        try:
            return await future
        except Expired:
            raise p.ProtocolError("deadline_exceeded", "deadline passed while queued for the engine") from None

    def _lookup(self, host: ModelHost, key: np.ndarray, as_of: int) -> Lookup | None:
        """Start the pattern lookup (None: patterns are off)."""
        if not (self._admin.patterns_enabled and host.retriever is not None):
            return None
        return host.retriever.begin(key, as_of)

    async def _retrieved(self, host: ModelHost,
                         lookup: Lookup | None) -> tuple[np.ndarray, np.ndarray, int, str | None]:
        """(pattern context, mask, neighbours used, fail-open reason or None). Never waits on the index longer
        than patterns.timeout_ms: the retriever fails open (regime-only) past it. The `retrieval` stage is
        this wait."""
        reason = "disabled"
        if lookup is not None:
            found = lookup.answered
            if found is None:
                timeout_s = host.config.patterns.timeout_ms / 1000.0
                # Alone, nothing else needs the loop: wait on the worker directly, without the round trip
                # through the loop's wake-up pipe (~0.1 ms here). The wait keeps its bound, the timeout.
                found = lookup.result(timeout_s) if self._alone() else await lookup.result_async(timeout_s)
            reason = found.reason
            if reason is None:
                return found.pattern_context, found.mask, int(found.used[0]), None
        self.metrics.fail_open.labels(reason).inc()
        context, mask = host.regime_only()
        return context, mask, 0, _REPLY_REASON.get(reason, reason)

    def _signal_reply(self, req: p.BarRequest, host: ModelHost, row: RowResult, state: int, used: int,
                      reason: str | None, stages: dict[str, float], t0: float) -> p.SignalReply:
        d = host.decide(row.outputs, state)
        decision = self._comply(req, d.action, d.quantity)
        us = {k: int(v * 1e6) for k, v in stages.items()}
        return p.SignalReply(
            id=req.id, model=host.name, action=decision.action, probs=d.probs, confidence=d.confidence,
            quantity=decision.quantity, forecast=p.Forecast(d.forecast_coarse, d.forecast_fine), value=d.value,
            regime=p.Regime(d.regime, d.regime_probs),
            patterns=p.Patterns(used=used, fail_open=reason is not None, reason=reason),
            act=p.Act(row.segments, "q" if row.halted_by_q else "max"),
            compliance=p.Compliance(decision.allowed, decision.original_action, list(decision.reasons)),
            timing_us=p.Timing(total=int((time.perf_counter() - t0) * 1e6), **us))

    def _comply(self, req: p.BarRequest, action: str, quantity: float) -> GateDecision:
        """The compliance hook: the gate decides when the request carries `market`; the kill switch always."""
        if req.market is not None:
            m = req.market
            return self._gate.check(req.instrument, action, quantity,
                                    MarketSnapshot(m.ts, m.last, m.bid, m.ask, m.prior_close, m.luld_tier,
                                                   m.ssr_active), position=m.position)
        if self._gate.kill_switch:
            return GateDecision("HOLD", 0.0, False, action, ["kill_switch"])
        return GateDecision(action, quantity, True, action, [])

    # ------------------------------------------------------------ reloads and stats (admin commands: admin.py)

    def _swapped(self, old: ModelHost | None) -> None:
        """A reload swapped hosts: the streams' windows were built with the old model's inputs; the old host
        retires once its last request is done."""
        self._streams.clear()
        if old is not None:
            self._spawn(Hosting.retire(old, self.serve.drain_timeout_s))

    def stats(self) -> dict[str, Any]:
        host = self._hosting.host
        return {"model": host.name if host else "", "ready": self.ready, "pid": os.getpid(),
                "workers": self._workers(),
                "uptime_s": time.monotonic() - self._started,
                "patterns_enabled": self._admin.patterns_enabled, "kill_switch": self._gate.kill_switch,
                "in_flight": self._in_flight, "queue_depth": host.batcher.depth if host else 0,
                "sessions": len(self._streams), "sessions_bytes": self._streams.nbytes,
                "counters": self.metrics.snapshot()}
