"""The run ledger: one SQLite file that every `train` and `validate` run appends to.

A run's row holds its kind, config hash, data fingerprint, seed, metrics and (validate) verdict. A validate
run also stores each predictor's out-of-sample target positions as a *trial*: the Deflated Sharpe Ratio
counts every distinct strategy ever tried on the same data, and PBO puts those tried on the same
out-of-sample samples into its trial matrix, without a manual count. A trial is identified by its positions
(and the samples they are on): re-running a configuration, or a baseline whose settings did not change,
adds no trial; a new HRM configuration or seed does.

The file lives in the runs directory (the parent of the run's own directory) unless ``tracking.ledger`` names
another. Writers on one machine share it safely (SQLite locking, a busy timeout).
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from dualhrq.config import VALIDATE_REPORTING_ONLY, Config, prediction_settings
from dualhrq.data.bars import Bars
from dualhrq.errors import ConfigurationError

LEDGER_FORMAT = 1
LEDGER_NAME = "ledger.sqlite"


def config_hash(cfg: Config) -> str:
    """Identifies a configuration tried: every setting that can change a model or a prediction (the seed too):
    the model's (`prediction_settings`) and validation's splits and baselines, not its reporting."""
    validate = {k: v for k, v in msgspec.to_builtins(cfg.validate).items() if k not in VALIDATE_REPORTING_ONLY}
    kept = {**prediction_settings(cfg), "validate": validate}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def bars_fingerprint(bars: Bars) -> str:
    """Identifies the data a run saw: every bar."""
    h = hashlib.sha256()
    for a in (bars.t, bars.o, bars.h, bars.l, bars.c, bars.v):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def datasets_fingerprint(series: Sequence[Bars]) -> str:
    """Identifies the data of a run over one or several instruments' bars (one: its `bars_fingerprint`)."""
    prints = [bars_fingerprint(b) for b in series]
    return prints[0] if len(prints) == 1 else hashlib.sha256("+".join(prints).encode()).hexdigest()[:16]


def samples_hash(t: np.ndarray) -> str:
    """Identifies a set of out-of-sample samples by their times."""
    return hashlib.sha256(np.ascontiguousarray(t, dtype=np.int64).tobytes()).hexdigest()[:16]


def default_ledger_path(cfg: Config, run_dir: str | Path) -> Path:
    return Path(cfg.tracking.ledger) if cfg.tracking.ledger else Path(run_dir).resolve().parent / LEDGER_NAME


@dataclass(frozen=True)
class Trial:
    """One strategy's out-of-sample target positions, on the samples ``samples`` identifies."""

    predictor: str
    samples: str  # samples_hash of the out-of-sample times
    sharpe: float  # per-sample Sharpe ratio of its net returns when it was run (NaN: riskless)
    positions: np.ndarray

    @property
    def key(self) -> str:
        h = hashlib.sha256(self.samples.encode())
        h.update(np.ascontiguousarray(self.positions, dtype=np.float64).tobytes())
        return h.hexdigest()[:24]


@dataclass(frozen=True)
class RunRecord:
    kind: str  # "train" or "validate"
    config_hash: str
    data_fingerprint: str
    dataset: str
    seed: int
    run_dir: str
    metrics: dict[str, Any] = field(default_factory=dict)
    verdict: str | None = None
    run_id: int | None = None  # set once in the ledger
    created: float = 0.0  # seconds since the epoch


_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        created REAL NOT NULL,
        config_hash TEXT NOT NULL,
        data_fingerprint TEXT NOT NULL,
        dataset TEXT NOT NULL,
        seed INTEGER NOT NULL,
        run_dir TEXT NOT NULL,
        metrics TEXT NOT NULL,
        verdict TEXT
    )""",
    """CREATE TABLE trials (
        run_id INTEGER NOT NULL REFERENCES runs(id),
        predictor TEXT NOT NULL,
        key TEXT NOT NULL,
        samples TEXT NOT NULL,
        sharpe REAL,
        positions BLOB NOT NULL,
        PRIMARY KEY (run_id, predictor)
    )""",
    "CREATE INDEX runs_by_data ON runs (data_fingerprint, kind)",
)


class Ledger:
    """The ledger file at ``path``, created there by a writer (train, validate) if it is not there yet, or is an
    empty file. ``read_only``: the file must be a ledger already, and is not changed. A file that is something
    else (another program's SQLite database, say) is refused, never written into. ``setting`` names where the
    path came from in errors."""

    def __init__(self, path: str | Path, *, read_only: bool = False, setting: str = "tracking.ledger") -> None:
        self.path = Path(path)
        where = f"{setting}: {self.path}"
        try:
            if read_only:
                self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, timeout=30.0)
        except (sqlite3.Error, OSError) as e:
            raise ConfigurationError(f"{where}: cannot open the run ledger ({e})") from None
        try:
            found = _ledger_format(self._db) if read_only else self._create_if_empty()
        except sqlite3.Error as e:
            self._db.close()
            raise ConfigurationError(f"{where}: cannot open the run ledger ({e})") from None
        if found is None or found != str(LEDGER_FORMAT):
            self._db.close()
            raise ConfigurationError(
                f"{where}: not a run ledger (no dualhrq ledger tables in it; `dualhrq train` and `dualhrq validate` "
                "write one)" if found is None else
                f"{where}: ledger format {found}, this version of dualhrq reads format {LEDGER_FORMAT}")

    def _create_if_empty(self) -> str | None:
        """The ledger's format, after writing the ledger's tables into a database that has no tables yet; None
        for a database with other tables. One write transaction: a second writer opening the same new file
        waits, then finds a whole ledger."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if not self._db.execute("SELECT 1 FROM sqlite_master").fetchone():
                for statement in _SCHEMA:
                    self._db.execute(statement)
                self._db.execute("INSERT INTO meta VALUES ('format', ?)", (str(LEDGER_FORMAT),))
            found = _ledger_format(self._db)
            self._db.commit()
        except BaseException:
            self._db.rollback()
            raise
        return found

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def append(self, record: RunRecord, trials: Sequence[Trial] = ()) -> RunRecord:
        """Add a run (and its trials) in one transaction; returns the record with its id and time."""
        created = record.created or time.time()
        with self._db:
            cur = self._db.execute(
                "INSERT INTO runs (kind, created, config_hash, data_fingerprint, dataset, seed, run_dir, metrics, "
                "verdict) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.kind, created, record.config_hash, record.data_fingerprint, record.dataset, record.seed,
                 record.run_dir, json.dumps(strict_json(record.metrics), allow_nan=False), record.verdict))
            run_id = int(cur.lastrowid)
            self._db.executemany(
                "INSERT INTO trials VALUES (?, ?, ?, ?, ?, ?)",
                [(run_id, t.predictor, t.key, t.samples, t.sharpe if np.isfinite(t.sharpe) else None,
                  np.ascontiguousarray(t.positions, dtype="<f8").tobytes()) for t in trials])
        return replace(record, run_id=run_id, created=created)

    def runs(self, kind: str | None = None) -> list[RunRecord]:
        query = "SELECT id, kind, created, config_hash, data_fingerprint, dataset, seed, run_dir, metrics, verdict " \
                "FROM runs" + (" WHERE kind = ?" if kind else "") + " ORDER BY id"
        return [RunRecord(kind=k, config_hash=ch, data_fingerprint=fp, dataset=ds, seed=seed, run_dir=rd,
                          metrics=json.loads(m), verdict=v, run_id=i, created=c)
                for i, k, c, ch, fp, ds, seed, rd, m, v in self._db.execute(query, (kind,) if kind else ())]

    def trials(self, data_fingerprint: str) -> list[Trial]:
        """Every distinct strategy validated on this data, oldest first (one per key)."""
        rows = self._db.execute(
            "SELECT t.predictor, t.key, t.samples, t.sharpe, t.positions FROM trials t JOIN runs r ON t.run_id = r.id "
            "WHERE r.data_fingerprint = ? AND r.kind = 'validate' ORDER BY r.id, t.predictor", (data_fingerprint,))
        seen: dict[str, Trial] = {}
        for predictor, key, samples, sharpe, blob in rows:
            if key not in seen:
                seen[key] = Trial(predictor, samples, float("nan") if sharpe is None else float(sharpe),
                                  np.frombuffer(blob, dtype="<f8").copy())
        return list(seen.values())


def _ledger_format(db: sqlite3.Connection) -> str | None:
    """The format a ledger records; None when the database is no ledger (no meta table, or no format in it)."""
    if not db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone():
        return None
    row = db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
    return None if row is None else str(row[0])


def strict_json(x: Any) -> Any:
    """Strict JSON: NaN and infinities become null, tuples lists, numpy scalars Python ones."""
    if isinstance(x, dict):
        return {str(k): strict_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [strict_json(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x
