"""A readers-writer lock for the pattern index.

hnswlib lets many threads query one index at once, but adding or deleting while a query walks the graph is
undefined behaviour. Queries take the shared side, mutations the exclusive side. A waiting writer stops new
readers from entering, so a steady stream of queries cannot starve a library update; queries that arrive in
the meantime wait, and the retriever's deadline turns that wait into a fail-open rather than a delay.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ReadWriteLock:
    """Many readers or one writer, writer-preferring."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self, blocking: bool = True) -> Iterator[bool]:
        """The shared side; yields whether it is held. ``blocking`` False: yields False at once, holding
        nothing, when a writer holds or awaits the lock."""
        with self._cond:
            held = blocking or not (self._writer or self._writers_waiting)
            while held and (self._writer or self._writers_waiting):
                self._cond.wait()
            self._readers += held
        if not held:
            yield False
            return
        try:
            yield True
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()
