"""The open streams of one server: a `signal` that names a session opens one, each `append` extends it.

Bounded in memory: at most ``sessions.max_streams`` (the least recently used goes first) and none idle longer
than ``sessions.idle_s``. A stream belongs to the model that built its window: after a reload, or for another
instrument, it is as unknown as an expired one, and the client resyncs with a full `signal`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dualhrq.config import SessionsConfig
from dualhrq.inputs.stream import Resync, StreamWindow


@dataclass
class Stream:
    instrument: str
    timeframe: str  # as the opening signal spelled it: appends are tokenised with the same id
    window: StreamWindow
    owner: Any  # the host that built the window; a stream is only extended by the same one
    used: float  # monotonic time of its last request


class Streams:
    def __init__(self, sessions: SessionsConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.sessions = sessions
        self._clock = clock
        self._open: OrderedDict[str, Stream] = OrderedDict()  # least recently used first

    def __len__(self) -> int:
        self._expire()
        return len(self._open)

    @property
    def nbytes(self) -> int:
        """Memory held by the open streams' windows."""
        return sum(s.window.nbytes for s in self._open.values())

    def open(self, session: str, instrument: str, timeframe: str, window: StreamWindow, owner: Any) -> None:
        """Open (or restart) a stream from a full window."""
        self._expire()
        self._open.pop(session, None)
        self._open[session] = Stream(instrument, timeframe, window, owner, self._clock())
        while len(self._open) > self.sessions.max_streams:
            self._open.popitem(last=False)

    def get(self, session: str, instrument: str, owner: Any) -> Stream:
        """The open stream ``session`` of ``instrument``, built by ``owner``; Resync when there is none."""
        self._expire()
        stream = self._open.get(session)
        if stream is None:
            raise Resync(f"session {session!r} is not open here (never opened, expired, dropped, or opened on "
                         "another worker): send a full signal with it")
        if stream.instrument != instrument:
            raise Resync(f"session {session!r} streams {stream.instrument!r}, not {instrument!r}")
        if stream.owner is not owner:
            self._open.pop(session)
            raise Resync(f"session {session!r} was opened with the model served before the last reload")
        stream.used = self._clock()
        self._open.move_to_end(session)
        return stream

    def drop(self, session: str) -> None:
        self._open.pop(session, None)

    def clear(self) -> None:
        self._open.clear()

    def _expire(self) -> None:
        horizon = self._clock() - self.sessions.idle_s
        while self._open:
            session, oldest = next(iter(self._open.items()))
            if oldest.used > horizon:
                return
            del self._open[session]
