"""A durable store of the gate's per-instrument state and of its kill switch, so a restarted or replacement
worker resumes them.

One SQLite file, one row per instrument: ``(instrument, version, state)``, where ``state`` is a BookState
encoded as JSON (readable with the ``sqlite3`` shell when an operator needs to see why an order was held)
and ``version`` counts the writes. The gate reads and writes a row inside one short ``BEGIN IMMEDIATE``
transaction per decision, committed before the decision is returned: the reply never promises an order the
store does not know about, and two processes that both touch an instrument (a worker taking over from a
dead one, or briefly overlapping owners) serialise on the file instead of overwriting each other. The kill
switch is a row of its own (``switches``), written before the admin command that set it is answered: a
process started on the file, or the whole server restarted, holds it as it was last set.

Journal mode WAL: readers never block the writer, and a commit is one append to the log. ``synchronous``
is NORMAL by default: in WAL mode a committed transaction survives the process being killed at any point
(it is in the log, which the OS holds), and only an OS crash or power loss can lose the last commits
(never corrupt the file); FULL also survives those, at the price of an fsync per decision on the reply
path. Choose FULL (``compliance.state_sync: full``) where the host can lose power without the gateway's
``market.position`` to put positions right again.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Literal

import msgspec

from dualhrq.compliance.luld import LimitSnapshot, ReferenceSnapshot
from dualhrq.compliance.ssr import SSRSnapshot
from dualhrq.errors import ConfigurationError, DataError

FORMAT_VERSION = 1
# Transactions last microseconds: a wait this long means a stuck process. The wait blocks the server's event loop,
# a worker's heartbeats to its broker included, so it stays well below the 3 s of silence after which a broker
# counts a worker lost (that would move all its instruments and fail its requests in flight): the one request
# fails instead (its decision is not returned, nothing was recorded), and the worker serves on.
BUSY_TIMEOUT_MS = 1_000

SyncMode = Literal["normal", "full"]


class BookState(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """One instrument's compliance state as stored (the gate's book; see dualhrq.compliance.gate)."""

    format_version: int
    position: float
    day: date | None
    prior_close: float
    last_ts: int
    luld_state: Literal["off", "normal", "limit", "paused"]
    band: tuple[float, float] | None
    ssr: SSRSnapshot
    reference: ReferenceSnapshot
    limit: LimitSnapshot


class _Versioned(msgspec.Struct):
    format_version: object = None


_SCHEMA = ("CREATE TABLE IF NOT EXISTS books (instrument TEXT PRIMARY KEY, version INTEGER NOT NULL, state TEXT NOT NULL)",
           "CREATE TABLE IF NOT EXISTS switches (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")


class StateJournal:
    """The store in one SQLite file; several processes may open the same file. Use from one thread."""

    def __init__(self, path: str | Path, synchronous: SyncMode = "normal") -> None:
        self.path = Path(path)
        if synchronous not in ("normal", "full"):
            raise ConfigurationError(f"compliance.state_sync: expected normal or full, got {synchronous!r}")
        try:
            # Autocommit mode: transactions are begun explicitly (BEGIN IMMEDIATE), never implicitly.
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                       check_same_thread=False)
        except sqlite3.Error as e:
            raise ConfigurationError(f"compliance.state_path: cannot open {self.path}: {e}") from None
        try:
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise ConfigurationError(f"compliance.state_path: {self.path}: the file system refuses WAL mode "
                                         f"(journal_mode stays {mode}); use a local disk")
            self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            for table in _SCHEMA:
                self._db.execute(table)
        except sqlite3.Error as e:
            self._db.close()
            raise ConfigurationError(f"compliance.state_path: cannot use {self.path} as the state store: {e}") from None
        except ConfigurationError:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """One write transaction: committed when the block ends, rolled back when it raises."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def read(self, instrument: str, known: int) -> tuple[int, BookState | None]:
        """The row's version, and its state unless the version is ``known`` (the caller's copy is current).
        Version 0 with no state: the store has nothing for this instrument."""
        row = self._db.execute("SELECT version, CASE WHEN version = ? THEN NULL ELSE state END FROM books "
                               "WHERE instrument = ?", (known, instrument)).fetchone()
        if row is None:
            return 0, None
        version, raw = row
        return version, None if raw is None else self._decode(instrument, raw)

    def write(self, instrument: str, version: int, state: BookState) -> None:
        self._db.execute("INSERT INTO books (instrument, version, state) VALUES (?, ?, ?) ON CONFLICT (instrument) "
                         "DO UPDATE SET version = excluded.version, state = excluded.state",
                         (instrument, version, msgspec.json.encode(state).decode()))

    def kill_switch(self) -> bool:
        """The kill switch as last set (off in a store that never had it set)."""
        row = self._db.execute("SELECT value FROM switches WHERE name = 'kill_switch'").fetchone()
        return row is not None and bool(row[0])

    def set_kill_switch(self, on: bool) -> None:
        """Set it, committed when this returns."""
        with self.exclusive():
            self._db.execute("INSERT INTO switches (name, value) VALUES ('kill_switch', ?) ON CONFLICT (name) "
                             "DO UPDATE SET value = excluded.value", (int(on),))

    def _decode(self, instrument: str, raw: object) -> BookState:
        where = f"{self.path}: instrument {instrument!r}"
        if not isinstance(raw, (str, bytes)):
            raise DataError(f"{where}: state: expected JSON text, got {type(raw).__name__}")
        try:
            found = msgspec.json.decode(raw, type=_Versioned).format_version
        except msgspec.DecodeError as e:
            raise DataError(f"{where}: state: not a BookState JSON object: {e}") from None
        if found != FORMAT_VERSION:
            raise DataError(f"{where}: state.format_version: format {found!r}, this version of dualhrq reads "
                            f"format {FORMAT_VERSION}; the row was written by another version")
        try:
            return msgspec.json.decode(raw, type=BookState)
        except msgspec.ValidationError as e:
            raise DataError(f"{where}: state: {e}") from None
        except msgspec.DecodeError as e:
            raise DataError(f"{where}: state: not a BookState JSON object: {e}") from None
