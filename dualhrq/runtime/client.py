"""The gateway client, sync (`Client`) and asyncio (`AsyncClient`), over a DEALER socket.

Each request gets a fresh id and the reply is matched by it; replies to other (earlier, abandoned) ids are
dropped. An error reply with a null id (the server could not read the request's id, as for a body over
`serve.max_body_bytes`) answers the request outstanding when there is only one, which is always so for
`Client`; the `AsyncClient` drops it while several are, since it cannot tell whose it is. A body that is not a reply of
this protocol at all is matched the same way (by the id it still carries, if any) and ends its request with
`BadReply`.

A request unanswered within `timeout_s` is retried up to `retries` times if repeating it is harmless (RETRIED;
never one carrying `market`, which the compliance gate would decide twice):
the zguide's Lazy Pirate, which also closes and reopens the sync client's socket so nothing stale is queued
towards a dead server. Admin commands are never retried, nor is a request that got any reply. With
`fallback="hold"`, a signal or append that ends in an error reply, a bad reply or a timeout comes back as a
HOLD reply (model "fallback", the cause in `compliance.reasons`) instead of raising, for gateways that must
always have an action.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

import msgspec
import numpy as np
import zmq
import zmq.asyncio

from dualhrq.data.bars import Bars
from dualhrq.errors import ConfigurationError, HRMError
from dualhrq.runtime import protocol as p
from dualhrq.runtime.security import ClientKeys

log = logging.getLogger(__name__)

BarsLike = Union[Mapping[str, Union[Sequence[float], np.ndarray]], Bars]  # {t,o,h,l,c,v} columns or Bars

# The requests a lost reply may be repeated for (same id): a ping changes nothing, a signal carries its whole window
# so the repeat is answered from the same bars, and an append the server had already applied is answered
# resync_required (not newer) instead of being counted twice; the stream then resends its whole window. An admin
# command may change state, so it is never repeated; nor is a request carrying `market`: the compliance gate
# keeps state (the simulated position), and a repeat the server had already decided would be decided twice.
RETRIED = frozenset({"ping", "signal", "append"})


def _numpy_scalar(obj: Any) -> Any:
    """A numpy number (a bar's close, its time) as the Python number it holds: the bars take numpy arrays, so
    `market` built from them must encode too."""
    if isinstance(obj, np.generic):
        return obj.item()
    raise NotImplementedError(f"cannot encode objects of type {type(obj).__name__}")


_ENCODER = msgspec.msgpack.Encoder(enc_hook=_numpy_scalar)


class RequestFailed(HRMError):
    """The server answered with an error reply (`code`, `field` as in the protocol)."""

    def __init__(self, reply: p.ErrorReply) -> None:
        super().__init__(f"{reply.code}: {reply.message}" + (f" (field {reply.field})" if reply.field else ""))
        self.code, self.field, self.reply = reply.code, reply.field, reply


class RequestTimeout(HRMError):
    """No reply within the timeout, after every retry the request allowed."""


class BadReply(HRMError):
    """What came back for a request is not a reply of this protocol (another service at the address, or a server
    speaking another version); not retried: the same peer would answer the same way."""


@dataclass(frozen=True)
class UndecodableReply:
    """A body that came back for a request but does not decode as a reply; `why` says what is wrong with it."""

    why: str


Answer = Union[p.Reply, UndecodableReply, None]  # what a request got: a reply, a bad one, or none in time


def signal_request(instrument: str, timeframe: str, coarse: BarsLike, fine: BarsLike, *,
                   deadline_ms: float | None = None, market: Mapping[str, Any] | None = None,
                   session: str | None = None) -> dict[str, Any]:
    """A signal request body (without id) from bars as numpy columns or lists; with `session`, it (re)opens that
    stream."""
    req: dict[str, Any] = {"type": "signal", "v": p.PROTOCOL_VERSION, "instrument": instrument,
                           "timeframe": timeframe, "coarse": _wire_bars(coarse), "fine": _wire_bars(fine)}
    if deadline_ms is not None:
        req["deadline_ms"] = float(deadline_ms)
    if market is not None:
        req["market"] = dict(market)
    if session is not None:
        req["session"] = session
    return req


def append_request(instrument: str, session: str, coarse: BarsLike, fine: BarsLike, *,
                   deadline_ms: float | None = None, market: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An append request body (without id): a stream's new fine bars and the coarse bars closed since."""
    req: dict[str, Any] = {"type": "append", "instrument": instrument, "session": session,
                           "coarse": _wire_bars(coarse), "fine": _wire_bars(fine)}
    if deadline_ms is not None:
        req["deadline_ms"] = float(deadline_ms)
    if market is not None:
        req["market"] = dict(market)
    return req


def _wire_bars(bars: BarsLike) -> dict[str, list]:
    if isinstance(bars, Bars):
        return msgspec.structs.asdict(p.wire_bars(bars))
    return {k: np.asarray(bars[k]).tolist() for k in ("t", "o", "h", "l", "c", "v")}


def hold_reply(request_id: str, cause: str) -> p.SignalReply:
    """What `fallback="hold"` returns in place of an error or a timeout."""
    return p.SignalReply(
        id=request_id, model="fallback", action="HOLD", probs=p.one_hot("HOLD"), confidence=0.0,
        quantity=0.0, forecast=p.Forecast(0.0, 0.0), value=0.0, regime=p.Regime(-1, []),
        patterns=p.Patterns(0, True, None), act=p.Act(0, "max"),
        compliance=p.Compliance(False, "HOLD", [f"fallback:{cause}"]), timing_us=p.Timing(0, 0, 0, 0, 0, 0))


def _decode(body: bytes) -> tuple[str | None, p.Reply | UndecodableReply]:
    """(the id the body carries, None when it has no readable one; the reply, or what is wrong with it)."""
    try:
        reply = p.decode_reply(body)
    except p.UNDECODABLE as e:
        return p.reply_id(body), UndecodableReply(f"a body that is not a protocol v{p.PROTOCOL_VERSION} reply ({e})")
    return reply.id, reply


def _cause(answer: Answer) -> str:
    """The fallback's cause for a request that got no usable reply."""
    if answer is None:
        return "timeout"
    return answer.code if isinstance(answer, p.ErrorReply) else "bad_reply"


class _Base:
    def __init__(self, address: str, timeout_s: float, retries: int, curve: ClientKeys | None,
                 fallback: Literal["hold"] | None) -> None:
        if fallback not in (None, "hold"):
            raise ConfigurationError(f"fallback: expected None or 'hold', got {fallback!r}")
        if timeout_s <= 0:
            raise ConfigurationError(f"timeout_s: must be > 0, got {timeout_s}")
        if retries < 0:
            raise ConfigurationError(f"retries: must be >= 0, got {retries}")
        self.address, self.timeout_s, self.retries = address, timeout_s, retries
        self.curve, self.fallback = curve, fallback

    def _socket(self, ctx: zmq.Context) -> zmq.Socket:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            self.curve.apply(sock)
        sock.connect(self.address)
        return sock

    @staticmethod
    def _body(message: Mapping[str, Any]) -> tuple[str, bytes]:
        rid = uuid.uuid4().hex
        return rid, _ENCODER.encode({**message, "id": rid})

    def _attempts(self, message: Mapping[str, Any]) -> int:
        """How many times a request is sent before it times out (see RETRIED)."""
        return 1 + self.retries if message["type"] in RETRIED and not message.get("market") else 1

    def _outcome(self, kind: str, rid: str, answer: Answer, message: Mapping[str, Any]) -> p.Reply:
        """The reply to `message` as `request` returns it (errors raised, the fallback applied)."""
        if isinstance(answer, (p.Pong, p.SignalReply, p.AdminReply)):
            return answer
        if self.fallback == "hold" and kind in ("signal", "append"):
            return hold_reply(rid, _cause(answer))
        if answer is None:
            raise RequestTimeout(f"{kind} {rid}: no reply from {self.address} in {self.timeout_s:g} s "
                                 f"x {self._attempts(message)} attempts")
        if isinstance(answer, UndecodableReply):
            raise BadReply(f"{kind} {rid}: {self.address} answered with {answer.why}")
        raise RequestFailed(answer)


class Client(_Base):
    """Blocking client: one request at a time (use one per thread, or AsyncClient for concurrency)."""

    def __init__(self, address: str = "tcp://127.0.0.1:5555", *, timeout_s: float = 1.0, retries: int = 2,
                 curve: ClientKeys | None = None, fallback: Literal["hold"] | None = None) -> None:
        super().__init__(address, timeout_s, retries, curve, fallback)
        self._ctx = zmq.Context()
        self._sock = self._socket(self._ctx)
        self._abandoned = False  # whether the socket may still get a reply to a request given up on

    def ping(self) -> p.Pong:
        return self.request({"type": "ping"})  # type: ignore[return-value]

    def signal(self, instrument: str, timeframe: str, coarse: BarsLike, fine: BarsLike, *,
               deadline_ms: float | None = None, market: Mapping[str, Any] | None = None) -> p.SignalReply:
        return self.request(signal_request(instrument, timeframe, coarse, fine, deadline_ms=deadline_ms,
                                           market=market))  # type: ignore[return-value]

    def admin(self, cmd: str, token: str = "", bundle: str = "") -> p.AdminReply:
        return self.request({"type": "admin", "cmd": cmd, "token": token, "bundle": bundle})  # type: ignore[return-value]

    def stream(self, instrument: str, timeframe: str, session: str | None = None) -> SignalStream:
        """Signals for one instrument as a stream that sends only the new bars (see SignalStream)."""
        return SignalStream(self, instrument, timeframe, session)

    def request(self, message: Mapping[str, Any]) -> p.Reply:
        """Send any request map (its id is set here) and return the typed reply."""
        return self._outcome(*self.exchange(message), message)

    def exchange(self, message: Mapping[str, Any]) -> tuple[str, str, Answer]:
        """(type, id, the reply as it came, an UndecodableReply, or None after every attempt timed out):
        `request` before errors and the fallback are applied."""
        kind = message["type"]
        rid, body = self._body(message)
        for _ in range(self._attempts(message)):
            if self._abandoned:
                self._reopen()
            until = time.monotonic() + self.timeout_s
            answer = self._await(rid, until) if self._send(body, until) else None
            self._abandoned = answer is None
            if answer is not None:
                return kind, rid, answer
        return kind, rid, None

    def _reopen(self) -> None:
        """Lazy Pirate: a fresh socket after an unanswered request, so nothing stale waits for a dead or restarted
        server, and no late reply to it is taken for the next request's (this socket only ever carries one)."""
        self._sock.close()
        self._sock = self._socket(self._ctx)
        self._abandoned = False

    def _send(self, body: bytes, until: float) -> bool:
        """Queue the request unless the socket cannot take it before `until`: a DEALER blocks a send while it
        has no peer (e.g. the server refused our CURVE key and dropped the connection), and a gateway must
        get its timeout, not a hang."""
        if not self._sock.poll(max(0, int((until - time.monotonic()) * 1000)) + 1, zmq.POLLOUT):
            return False
        try:
            self._sock.send(body, zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def _await(self, rid: str, until: float) -> p.Reply | UndecodableReply | None:
        while (left := until - time.monotonic()) > 0:
            if not self._sock.poll(int(left * 1000) + 1):
                continue
            owner, answer = _decode(self._sock.recv_multipart()[-1])
            if owner in (rid, None):  # None: the server could not read the id, and this is the one request out
                return answer
        return None

    def close(self) -> None:
        self._sock.close()
        self._ctx.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _StreamPlan:
    """What a stream sends next, and what the server holds of it: the logic `SignalStream` and
    `AsyncSignalStream` share around their one (sync or async) exchange."""

    def __init__(self, instrument: str, timeframe: str, session: str | None) -> None:
        self.instrument, self.timeframe = instrument, timeframe
        self.session = session or uuid.uuid4().hex
        self.resyncs = 0  # full windows sent after the first
        self._last_fine: int | None = None  # t of the newest fine bar the server holds for this stream
        self._last_coarse: int | None = None
        self._sent_whole = False  # whether the last request sent was the whole window

    def append(self, coarse: BarsLike, fine: BarsLike, deadline_ms: float | None,
               market: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """The append of the bars newer than those the server holds; None when the window does not reach back
        to them (or nothing was sent yet): then the whole window goes."""
        fine_t, coarse_t = _times(fine), _times(coarse)
        if self._last_fine is None or not (len(fine_t) and fine_t[0] <= self._last_fine < fine_t[-1]):
            return None
        new_fine = int(np.searchsorted(fine_t, self._last_fine, side="right"))
        new_coarse = 0 if self._last_coarse is None else int(np.searchsorted(coarse_t, self._last_coarse,
                                                                             side="right"))
        closed = int(np.searchsorted(coarse_t, fine_t[-1], side="right"))  # a forming bar waits until it closes
        self._sent_whole = False
        return append_request(self.instrument, self.session, _Rows(coarse, new_coarse, closed),
                              _Rows(fine, new_fine, len(fine_t)), deadline_ms=deadline_ms, market=market)

    def whole(self, coarse: BarsLike, fine: BarsLike, deadline_ms: float | None,
              market: Mapping[str, Any] | None) -> dict[str, Any]:
        """The whole window as a signal that (re)opens the session."""
        self._sent_whole = True
        return signal_request(self.instrument, self.timeframe, coarse, fine, deadline_ms=deadline_ms,
                              market=market, session=self.session)

    def resync(self, reply: Answer) -> bool:
        """Whether an append's reply asks for the whole window (counted)."""
        asked = isinstance(reply, p.ErrorReply) and reply.code == "resync_required"
        self.resyncs += asked
        return asked

    def settle(self, reply: Answer, coarse: BarsLike, fine: BarsLike) -> None:
        """After a reply: a signal reply means the server holds the window up to its newest bar; anything else
        after a whole window means it may hold none, so the next call sends it whole again (an append would only
        earn resync_required). After an append that failed otherwise, what the server holds is unknown: the next
        append starts from the last bar known held, and a server that had applied it asks for a resync."""
        if isinstance(reply, p.SignalReply):
            fine_t, coarse_t = _times(fine), _times(coarse)
            self._last_fine = int(fine_t[-1])
            closed = coarse_t[coarse_t <= fine_t[-1]]
            self._last_coarse = int(closed[-1]) if len(closed) else self._last_coarse
        elif self._sent_whole:
            self._last_fine = self._last_coarse = None


class SignalStream(_StreamPlan):
    """One instrument's signals over an `append` session (`Client.stream`). Each call passes the window of bars
    the caller holds now, as for `Client.signal`; only the bars newer than those already sent go on the wire.
    The first call, a call whose window no longer reaches back to the last bar sent, and any `resync_required`
    send the whole window as a `signal` that (re)opens the session, so the caller never handles a resync."""

    def __init__(self, client: Client, instrument: str, timeframe: str, session: str | None = None) -> None:
        super().__init__(instrument, timeframe, session)
        self.client = client

    def signal(self, coarse: BarsLike, fine: BarsLike, *, deadline_ms: float | None = None,
               market: Mapping[str, Any] | None = None) -> p.SignalReply:
        body = self.append(coarse, fine, deadline_ms, market)
        kind, rid, reply = self.client.exchange(body) if body else ("signal", "", None)
        if body is None or self.resync(reply):
            body = self.whole(coarse, fine, deadline_ms, market)
            kind, rid, reply = self.client.exchange(body)
        self.settle(reply, coarse, fine)
        return self.client._outcome(kind, rid, reply, body)  # type: ignore[return-value]


class AsyncSignalStream(_StreamPlan):
    """`SignalStream` for the asyncio client (`AsyncClient.stream`). Await one call before the next: a stream's
    bars are sent in order."""

    def __init__(self, client: AsyncClient, instrument: str, timeframe: str, session: str | None = None) -> None:
        super().__init__(instrument, timeframe, session)
        self.client = client

    async def signal(self, coarse: BarsLike, fine: BarsLike, *, deadline_ms: float | None = None,
                     market: Mapping[str, Any] | None = None) -> p.SignalReply:
        body = self.append(coarse, fine, deadline_ms, market)
        kind, rid, reply = await self.client.exchange(body) if body else ("signal", "", None)
        if body is None or self.resync(reply):
            body = self.whole(coarse, fine, deadline_ms, market)
            kind, rid, reply = await self.client.exchange(body)
        self.settle(reply, coarse, fine)
        return self.client._outcome(kind, rid, reply, body)  # type: ignore[return-value]


class _Rows(Mapping):
    """Rows start..stop of a BarsLike's columns (no copy of the caller's arrays)."""

    def __init__(self, bars: BarsLike, start: int, stop: int) -> None:
        self.bars, self.start, self.stop = bars, start, max(start, stop)

    def __getitem__(self, k: str) -> np.ndarray:
        column = getattr(self.bars, k) if isinstance(self.bars, Bars) else self.bars[k]
        return np.asarray(column)[self.start:self.stop]

    def __iter__(self):
        return iter(("t", "o", "h", "l", "c", "v"))

    def __len__(self) -> int:
        return 6


def _times(bars: BarsLike) -> np.ndarray:
    return np.asarray(bars.t if isinstance(bars, Bars) else bars["t"])


class AsyncClient(_Base):
    """asyncio client: any number of concurrent requests over one DEALER, replies routed by id."""

    def __init__(self, address: str = "tcp://127.0.0.1:5555", *, timeout_s: float = 1.0, retries: int = 2,
                 curve: ClientKeys | None = None, fallback: Literal["hold"] | None = None) -> None:
        super().__init__(address, timeout_s, retries, curve, fallback)
        self._ctx = zmq.asyncio.Context()
        self._sock = self._socket(self._ctx)
        self._waiting: dict[str, asyncio.Future[p.Reply | UndecodableReply]] = {}
        self._reader: asyncio.Task | None = None

    async def ping(self) -> p.Pong:
        return await self.request({"type": "ping"})  # type: ignore[return-value]

    async def signal(self, instrument: str, timeframe: str, coarse: BarsLike, fine: BarsLike, *,
                     deadline_ms: float | None = None, market: Mapping[str, Any] | None = None) -> p.SignalReply:
        return await self.request(signal_request(instrument, timeframe, coarse, fine, deadline_ms=deadline_ms,
                                                 market=market))  # type: ignore[return-value]

    async def admin(self, cmd: str, token: str = "", bundle: str = "") -> p.AdminReply:
        return await self.request({"type": "admin", "cmd": cmd, "token": token, "bundle": bundle})  # type: ignore[return-value]

    def stream(self, instrument: str, timeframe: str, session: str | None = None) -> AsyncSignalStream:
        """Signals for one instrument as a stream that sends only the new bars (see SignalStream)."""
        return AsyncSignalStream(self, instrument, timeframe, session)

    async def request(self, message: Mapping[str, Any]) -> p.Reply:
        return self._outcome(*await self.exchange(message), message)

    async def exchange(self, message: Mapping[str, Any]) -> tuple[str, str, Answer]:
        """(type, id, the reply as it came, an UndecodableReply, or None after every attempt timed out), as
        Client.exchange."""
        if self._reader is None:
            self._reader = asyncio.create_task(self._read())
        kind = message["type"]
        rid, body = self._body(message)
        future = self._waiting[rid] = asyncio.get_running_loop().create_future()
        try:
            for _ in range(self._attempts(message)):
                try:  # the send is inside the timeout: a DEALER without a peer would block it indefinitely
                    return kind, rid, await asyncio.wait_for(self._exchange(body, future), self.timeout_s)
                except asyncio.TimeoutError:
                    continue
        finally:
            self._waiting.pop(rid, None)
        return kind, rid, None

    async def _exchange(self, body: bytes, future: asyncio.Future[p.Reply | UndecodableReply]
                        ) -> p.Reply | UndecodableReply:
        await self._sock.send(body)
        return await asyncio.shield(future)

    async def _read(self) -> None:
        while True:
            owner, answer = _decode((await self._sock.recv_multipart())[-1])
            future = self._owner(owner)
            if future is not None and not future.done():
                future.set_result(answer)

    def _owner(self, rid: str | None) -> asyncio.Future[p.Reply | UndecodableReply] | None:
        """The request a reply answers: the one of its id. A reply without a readable id answers the only request
        outstanding; while several are, it could be any one's, and is dropped rather than given to the wrong one
        (the request it answered then times out)."""
        if rid is not None:
            return self._waiting.get(rid)
        if len(self._waiting) == 1:
            return next(iter(self._waiting.values()))
        if self._waiting:
            log.warning("a reply without a readable id while %d requests are outstanding: dropped, as it could be "
                        "any one's", len(self._waiting))
        return None

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        self._sock.close()
        self._ctx.term()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
