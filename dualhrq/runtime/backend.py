"""The hop between the broker and its workers, and a worker's end of it (`BrokerLink`).

A worker's DEALER connects to the broker's backend ROUTER. Frames on that hop:

    broker -> worker   [seq, *client envelope, body]   a request; seq is the broker's 8-byte tag for it
                       [b"", HEARTBEAT, live]          the broker is there, and `live` workers are serving
    worker -> broker   [seq, *client envelope, reply]  the answer (a Server echoes every frame but the body)
                       [b"", HEARTBEAT, slot]          registration and liveness in one message
                       [b"", LEAVING]                  draining: route nothing new here

A request's first frame is never empty (it is the broker's seq), so an empty first frame marks control. As
every heartbeat registers, a worker re-registers by itself after the broker restarts, and a broker that
restarted drops replies to seqs it never issued.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import zmq

log = logging.getLogger(__name__)

HEARTBEAT = b"HB"
LEAVING = b"BYE"
HEARTBEAT_S = 0.5
# Silence after which the other side counts as gone: the broker then answers the worker's requests elsewhere,
# the worker reconnects. Several heartbeats long, so a worker busy in a long engine call is not declared dead.
TIMEOUT_S = 3.0


class BrokerLink:
    """A worker's registration with the broker: heartbeats, reconnects after TIMEOUT_S of silence, and the
    number of live workers the broker last announced (what `pong.workers` reports)."""

    def __init__(self, address: str, slot: str, heartbeat_s: float = HEARTBEAT_S, timeout_s: float = TIMEOUT_S):
        self.address, self.slot = address, slot
        self.workers = 1  # this one, until the broker says more
        self._heartbeat_s, self._timeout_s = heartbeat_s, timeout_s
        self._sock: zmq.Socket | None = None
        self._after_io: Callable[[], object] = lambda: None
        self._heard = time.monotonic()

    def attach(self, sock: zmq.Socket, after_io: Callable[[], object] = lambda: None) -> None:
        """Connect the worker's DEALER and register at once. ``after_io`` runs after every operation here on the
        socket: one can take the edge of its descriptor for a request that arrived meanwhile, and the server
        must look again."""
        sock.connect(self.address)
        self._sock, self._after_io = sock, after_io
        self._heard = time.monotonic()
        self._send(HEARTBEAT, self.slot.encode())

    def control(self, frames: list[bytes]) -> bool:
        """Note that the broker was heard; True when `frames` were its control message, consumed here."""
        self._heard = time.monotonic()
        if frames[0]:
            return False
        if len(frames) > 2 and frames[1] == HEARTBEAT:
            self.workers = int(frames[2])
        return True

    async def run(self) -> None:
        """Beat until cancelled; after TIMEOUT_S without a word from the broker, reconnect (a broker that
        restarted, or a connection that died without a reset, is found again)."""
        while True:
            await asyncio.sleep(self._heartbeat_s)
            assert self._sock is not None
            if time.monotonic() - self._heard > self._timeout_s:
                log.warning("no word from the broker at %s for %.1f s; reconnecting", self.address,
                            time.monotonic() - self._heard)
                try:
                    self._sock.disconnect(self.address)
                except zmq.ZMQError:
                    pass  # the old connection is already gone
                self._sock.connect(self.address)
                self._heard = time.monotonic()
                self._after_io()
            self._send(HEARTBEAT, self.slot.encode())

    def leave(self) -> None:
        """Tell the broker to send nothing new (the worker is draining)."""
        self._send(LEAVING)

    def _send(self, *control: bytes) -> None:
        if self._sock is not None:
            try:
                self._sock.send_multipart([b"", *control], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # a control frame that could not leave is simply sent again next beat
            self._after_io()
