"""The pattern library: embeddings of past market windows and what happened after them, searchable with hnswlib.

Each entry is one window of fine bars of one instrument: its embedding, ``window_start``/``window_end``,
``available_at`` (window end + label horizon: the moment its outcome became known), ``outcome`` (the realised
forward return), ``regime``, ``quality`` and ``expires_at`` (0 = never), all times int nanoseconds.

No look-ahead: ``query(..., as_of)`` only ever returns entries with ``available_at <= as_of`` that are alive
(not deleted, not expired at ``as_of``). hnswlib cannot filter by time itself without calling back into Python
for every candidate, so the library over-fetches from the graph and filters with numpy, and when few entries
qualify it searches them exactly instead (cheaper than a huge over-fetch, and it can never come up short). A
library of at most EXACT_MAX rows is always searched exactly: training's time-filtered lookups and serving's
then find the same neighbours, and a lookup's cost is fixed (`bounded`).

Lifecycle: ``expire`` and ``update_quality`` mark entries deleted in hnswlib and free their rows; ``add`` reuses
deleted slots (``allow_replace_deleted``) before growing, so a library under churn does not grow without bound.
hnswlib is not safe for a mutation concurrent with queries, so queries hold the shared side of a
readers-writer lock and every mutation the exclusive side.

The entries' fields, slot reuse and the labels handed to hnswlib are kept by ``PatternRows`` (rows.py); this
module keeps the index and everything a query does.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path

import hnswlib
import msgspec
import numpy as np
import numpy.typing as npt
from numba import njit

from dualhrq.config import PatternsConfig
from dualhrq.data.resample import DAY_NS
from dualhrq.errors import ConfigurationError, DataError, ModelLoadError
from dualhrq.patterns.arrays import column, finite_matrix
from dualhrq.patterns.checksums import verify_checksums, write_checksums
from dualhrq.patterns.rows import FIELDS, PatternRows
from dualhrq.patterns.rwlock import ReadWriteLock

log = logging.getLogger(__name__)

# When at most this many entries qualify for an as_of, or they are under _EXACT_FRACTION of the live ones, the
# compiled exact search beats the graph and over-fetching from it. A library of at most this many rows is
# `bounded`: every query scans all of them (~4 us per query over 3,600 entries of 16 dims), a fixed cost.
EXACT_MAX = 4096
_EXACT_FRACTION = 0.1
_OVERFETCH = 2.0  # graph candidates fetched per needed hit, beyond the share that fails the time filter
_OUTCOME_CLIP = 8.0  # context outcomes in units of outcome_scale: one crash day must not dominate the pooling
_FORMAT = 2  # 2: instrument codes count from 1, 0 is padding
_FILES = ("index.bin", "meta.npz", "library.json")


def exact_knn(queries: np.ndarray, vectors: np.ndarray, k: int, space: str,
              rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force k nearest among ``vectors[rows]`` (default: all): their rows [B, k] and distances [B, k] float64,
    nearest first, the one earlier in ``rows`` first among equals. hnswlib's distances: squared L2, or 1 - inner
    product (cosine normalises both sides)."""
    return knn_transposed(queries, np.ascontiguousarray(np.asarray(vectors, np.float32).T), k, space, rows)


def knn_transposed(queries: np.ndarray, vectors_t: np.ndarray, k: int, space: str,
                   rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``exact_knn`` on the vectors transposed ([E, n] float32, C-contiguous): the layout in which the scan
    runs along the entries, several at a time (measured: ~4 us for 3,600 entries of 16 dims, against ~27 us
    entry by entry). Every entry's distance is computed; ``rows`` selects among them."""
    q = np.ascontiguousarray(queries, np.float32)
    vectors_t = np.ascontiguousarray(vectors_t, np.float32)
    rows = np.arange(vectors_t.shape[1]) if rows is None else np.asarray(rows, np.int64).reshape(-1)
    # The compiled scan reads without bounds checks: check here what it will index.
    if q.ndim != 2 or vectors_t.ndim != 2 or q.shape[1] != vectors_t.shape[0]:
        raise DataError(f"queries [B, E] and vectors [E, n] expected, got shapes {list(q.shape)} and "
                        f"{list(vectors_t.shape)}")
    if len(rows) and not 0 <= int(rows.min()) <= int(rows.max()) < vectors_t.shape[1]:
        raise DataError(f"rows: must be in 0..{vectors_t.shape[1] - 1}, got {int(rows.min())}..{int(rows.max())}")
    k = min(k, len(rows))
    idx = np.empty((len(q), k), np.int64)
    dist = np.empty((len(q), k), np.float64)
    if k:
        _knn_rows(q, vectors_t, rows, _SPACES.index(space), idx, dist)
    return idx, dist


_SPACES = ("l2", "cosine", "ip")


@njit(cache=True, nogil=True)
def _knn_rows(q: np.ndarray, vt: np.ndarray, rows: np.ndarray, space: int, idx: np.ndarray,
              dist: np.ndarray) -> None:
    """Every entry's distance, summed over the dimensions in order (one pass per dimension, along the entries),
    then the k best of ``rows`` by insertion. At the few thousand entries a serving library holds this is
    cheaper than a graph search, and its cost is fixed, so the caller's thread may run it (the retriever does)
    where a graph search's time could not be bounded."""
    width, n, k = vt.shape[0], vt.shape[1], idx.shape[1]
    scale = np.ones(n)  # cosine: 1 / |v|
    if space == 1:
        sq = np.zeros(n)
        for e in range(width):
            for j in range(n):
                sq[j] += np.float64(vt[e, j]) * np.float64(vt[e, j])
        for j in range(n):
            scale[j] = 1.0 / max(math.sqrt(sq[j]), 1e-30)
    d = np.empty(n)
    for b in range(q.shape[0]):
        d[:] = 0.0
        qq = 0.0
        for e in range(width):
            x = np.float64(q[b, e])
            qq += x * x
            if space == 0:
                for j in range(n):
                    diff = x - vt[e, j]
                    d[j] += diff * diff
            else:
                for j in range(n):
                    d[j] += x * vt[e, j]
        if space != 0:
            qs = 1.0 / max(math.sqrt(qq), 1e-30) if space == 1 else 1.0
            for j in range(n):
                d[j] = 1.0 - d[j] * qs * scale[j]
        filled = 0
        for r in rows:
            dr = d[r]
            if filled == k and dr >= dist[b, k - 1]:
                continue
            pos = min(filled, k - 1)
            while pos > 0 and dist[b, pos - 1] > dr:  # strictly: an equal distance keeps the earlier row first
                dist[b, pos] = dist[b, pos - 1]
                idx[b, pos] = idx[b, pos - 1]
                pos -= 1
            dist[b, pos] = dr
            idx[b, pos] = r
            filled = min(filled + 1, k)


@njit(cache=True, nogil=True)
def _similarity(distance: np.float32, space: int) -> np.float32:
    """A distance as a similarity, larger = closer, in float32: 1/(1+d) for squared L2 (in (0, 1]), 1 - d
    otherwise."""
    one = np.float32(1.0)
    return one / (one + distance) if space == 0 else one - distance


@njit(cache=True, nogil=True)
def _similarities(dist: np.ndarray, valid: np.ndarray, space: int, out: np.ndarray) -> None:
    """out = the similarity of each hit [B, w], 0 for padding (whose distance is inf)."""
    for b in range(dist.shape[0]):
        for j in range(dist.shape[1]):
            out[b, j] = _similarity(dist[b, j], space) if valid[b, j] else np.float32(0.0)


@dataclasses.dataclass(frozen=True)
class Hits:
    """Neighbours of B queries, nearest first, copied out of the library (later mutations do not change them).

    Columns where a row has fewer hits than the others are padding: id -1, distance inf, instrument "",
    everything else 0.
    """

    ids: np.ndarray  # [B, k] int64 entry labels, -1 = no hit
    distance: np.ndarray  # [B, k] float32
    similarity: np.ndarray  # [B, k] float32
    instrument: np.ndarray  # [B, k] str
    window_start: np.ndarray  # [B, k] int64 ns
    window_end: np.ndarray  # [B, k] int64 ns
    available_at: np.ndarray  # [B, k] int64 ns
    outcome: np.ndarray  # [B, k] float32, realised forward return
    regime: np.ndarray  # [B, k] int32
    quality: np.ndarray  # [B, k] float32
    embedding: np.ndarray  # [B, k, E] float32

    @property
    def valid(self) -> np.ndarray:
        return self.ids >= 0

    @property
    def count(self) -> np.ndarray:
        """Hits per query [B]."""
        return self.valid.sum(axis=1)


# The row fields copied into Hits: its own fields that rows have, and the label (its ids). Gathering only these
# keeps the serving path from copying the rest.
_HIT_FIELDS = ("label", *(f.name for f in dataclasses.fields(Hits) if f.name in FIELDS))


class PatternLibrary:
    """hnswlib index over the entries in a PatternRows, with time-filtered queries and a lifecycle. Thread-safe."""

    def __init__(self, dim: int, cfg: PatternsConfig, outcome_scale: float = 1.0) -> None:
        self._setup(dim, cfg, outcome_scale)
        self._rows = PatternRows(dim, cfg.max_elements)
        self._index = hnswlib.Index(space=cfg.space, dim=dim)
        self._index.init_index(max_elements=cfg.max_elements, M=cfg.m, ef_construction=cfg.ef_construction,
                               allow_replace_deleted=True)
        self._index.set_ef(cfg.ef)
        self._refresh_bounds()

    def _setup(self, dim: int, cfg: PatternsConfig, outcome_scale: float) -> None:
        if dim < 1:
            raise ConfigurationError(f"patterns.embed_dim: must be >= 1, got {dim}")
        if not (math.isfinite(outcome_scale) and outcome_scale > 0):
            raise DataError(f"outcome_scale: must be a positive finite number, got {outcome_scale}")
        self.dim = dim
        self.cfg = cfg
        self.outcome_scale = float(outcome_scale)
        self._lock = ReadWriteLock()
        self._transposed: np.ndarray | None = None  # `_embedding_t`

    # ------------------------------------------------------------ size and search width

    def __len__(self) -> int:
        """Live entries (added, not deleted)."""
        return self._rows.live

    @property
    def slots(self) -> int:
        """Slots the index has used, deleted ones included: reuse keeps this flat under churn."""
        return self._rows.size

    @property
    def ef(self) -> int:
        return self._index.ef

    @ef.setter
    def ef(self, value: int) -> None:
        if value < 1:
            raise ConfigurationError(f"patterns.ef: must be >= 1, got {value}")
        with self._lock.write():
            self._index.set_ef(int(value))

    # ------------------------------------------------------------ growth

    def add(self, embeddings: np.ndarray, *, instrument: str | list[str] | np.ndarray, window_start: npt.ArrayLike,
            window_end: npt.ArrayLike, available_at: npt.ArrayLike, outcome: npt.ArrayLike, regime: npt.ArrayLike,
            quality: npt.ArrayLike | None = None, expires_at: npt.ArrayLike | None = None) -> np.ndarray:
        """Add n entries (metadata: scalars or length-n vectors; times int ns). Returns their labels [n].

        ``quality`` defaults to ``cfg.initial_quality``; ``expires_at`` to ``available_at + expiry_days`` when
        ``cfg.expiry_days`` > 0, else 0 (never). Deleted slots are reused before the index grows.
        """
        emb = finite_matrix(embeddings, "embeddings", self.dim, np.float32)
        n = len(emb)
        names = [instrument] * n if isinstance(instrument, str) else [str(s) for s in instrument]
        if len(names) != n:
            raise DataError(f"instrument: expected a string or {n} strings, got {len(names)}")
        if any(not s for s in names):
            raise DataError("instrument: empty instrument name")
        start = column(window_start, "window_start", n, np.int64)
        end = column(window_end, "window_end", n, np.int64)
        avail = column(available_at, "available_at", n, np.int64)
        out = column(outcome, "outcome", n, np.float64).astype(np.float32)
        reg = column(regime, "regime", n, np.int32)
        qual = column(self.cfg.initial_quality if quality is None else quality, "quality", n, np.float32)
        if expires_at is None:
            days = self.cfg.expiry_days
            exp = avail + int(days * DAY_NS) if days > 0 else np.zeros(n, np.int64)
        else:
            exp = column(expires_at, "expires_at", n, np.int64)
        for name, bad in (("window_end", end < start), ("available_at", avail < end), ("regime", reg < 0),
                          ("quality", (qual < 0) | (qual > 1)), ("expires_at", (exp != 0) & (exp < avail))):
            if bad.any():
                raise DataError(f"{name}: {int(bad.sum())} entries invalid (first at position {int(np.argmax(bad))}): "
                                "need window_start <= window_end <= available_at <= expires_at (or 0), regime >= 0, "
                                "0 <= quality <= 1")
        if n == 0:
            return np.zeros(0, np.int64)

        with self._lock.write():
            rows = self._rows.append(names, embedding=emb, window_start=start, window_end=end, available_at=avail,
                                     expires_at=exp, outcome=out, regime=reg, quality=qual)
            labels = self._rows["label"][rows]
            self._index.add_items(emb, labels.astype(np.uint64), replace_deleted=True)
            self._transposed = None
            self._refresh_bounds()
        return labels

    # ------------------------------------------------------------ search

    def query(self, embeddings: np.ndarray, as_of: int | np.ndarray, k: int) -> Hits:
        """The k nearest entries known at ``as_of`` (int ns, one for all queries or one per query [B]).

        k is clamped to the live count; queries with nothing eligible get an all-padding row (``count`` 0),
        never an error.
        """
        q = finite_matrix(embeddings, "embeddings", self.dim, np.float32)
        with self._lock.read():
            return self._gather(*self._nearest(q, as_of, k))

    def pattern_context(self, embeddings: np.ndarray, as_of: int | np.ndarray, pattern_dim: int,
                        k: int) -> tuple[np.ndarray, np.ndarray]:
        """``context(query(...))`` in one pass that copies only what the context holds: the serving path."""
        q = finite_matrix(embeddings, "embeddings", self.dim, np.float32)
        with self._lock.read():
            return self._pattern_context(q, as_of, pattern_dim, k)

    @property
    def bounded(self) -> bool:
        """Whether every query is the exact search over at most EXACT_MAX rows (its time filter a pass over as
        many): a fixed cost, whatever ``as_of``."""
        return self.slots <= EXACT_MAX

    def try_pattern_context(self, embeddings: np.ndarray, as_of: int, pattern_dim: int,
                            k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """``pattern_context`` when it is of fixed cost (`bounded`), or None at once: the library is bigger, or
        an update holds or awaits the index."""
        q = finite_matrix(embeddings, "embeddings", self.dim, np.float32)
        with self._lock.read(blocking=False) as held:
            return self._pattern_context(q, as_of, pattern_dim, k) if held and self.bounded else None

    def _pattern_context(self, q: np.ndarray, as_of: int | np.ndarray, pattern_dim: int,
                         k: int) -> tuple[np.ndarray, np.ndarray]:
        """The caller holds the read lock."""
        if self.bounded and isinstance(as_of, (int, np.integer)):
            return self._scanned_context(q, self._known_rows(int(as_of)), pattern_dim, k)
        rows, dist = self._nearest(q, as_of, k)
        valid = rows >= 0
        padded = not valid.all()
        r = np.where(valid, rows, 0) if padded else rows
        fields = {name: self._rows[name][r] for name in ("embedding", "outcome", "quality")}
        if padded:  # padding read row 0: blank it, as `query` does (times 0 would leave -0.0)
            for column in fields.values():
                column[~valid] = 0
        return self._context(sim=self._similarity(valid, dist), valid=valid, pattern_dim=pattern_dim, k=k,
                             **fields)

    def _known_rows(self, as_of: int) -> np.ndarray:
        """The live rows known at ``as_of`` and not expired by then, in row order; the caller holds the read lock.
        A query after every live entry's time (the serving case) needs no pass over the rows."""
        if self._sees_all_live(as_of):
            return self._live_rows
        r = self._rows
        return _known_at(r["alive"], r["available_at"], r["expires_at"], as_of)

    def _scanned_context(self, q: np.ndarray, rows: np.ndarray, pattern_dim: int,
                         k: int) -> tuple[np.ndarray, np.ndarray]:
        """`_pattern_context` of queries at one time in a bounded library, among ``rows`` (those known then):
        the exact scan, the gather and the context in one compiled call, where the steps' numpy calls on arrays
        this small would cost ten times the scan. The same kernels as the general path, so the same numbers."""
        _check_context(pattern_dim, k)
        ctx = np.empty((len(q), k, pattern_dim), np.float32)
        mask = np.empty((len(q), k), np.float32)
        r = self._rows
        _scan_context(q, self._embedding_t(), rows, _SPACES.index(self.cfg.space), r["embedding"],
                      r["outcome"], r["quality"], self.outcome_scale, _OUTCOME_CLIP, ctx, mask)
        return ctx, mask

    def _nearest(self, q: np.ndarray, as_of: int | np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows [B, min(k, live)] of the nearest entries known at ``as_of`` (-1: padding) and their distances;
        the caller holds the read lock."""
        if k < 1:
            raise ConfigurationError(f"k: must be >= 1, got {k}")
        width = min(k, len(self))
        rows = np.full((len(q), width), -1, np.int64)
        dist = np.full((len(q), width), np.inf, np.float32)
        if not width:
            return rows, dist
        if isinstance(as_of, (int, np.integer)):  # one time for every query: the serving case
            groups: Iterable[tuple[int, slice | np.ndarray]] = ((int(as_of), slice(None)),)
        else:
            when = column(as_of, "as_of", len(q), np.int64)
            groups = ((t, np.flatnonzero(when == t)) for t in np.unique(when))
        for t, sel in groups:
            if self._sees_all_live(t):  # the serving case: no per-entry time filter needed
                eligible, count = None, len(self)
            else:
                exp = self._rows["expires_at"]
                eligible = self._rows["alive"] & (self._rows["available_at"] <= t) & ((exp == 0) | (exp > t))
                count = int(eligible.sum())
            if count == 0:
                continue
            k_eff = min(width, count)
            r, d = self._search(q[sel], eligible, count, k_eff)
            rows[sel, :k_eff] = r
            dist[sel, :k_eff] = d
        return rows, dist

    def _search(self, q: np.ndarray, eligible: np.ndarray | None, count: int,
                k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows [B, k] and distances of the k nearest eligible entries (None: all live); caller holds the read lock."""
        live = len(self)
        if count <= EXACT_MAX or count < _EXACT_FRACTION * live:
            return self._exact(q, eligible, k)
        if eligible is None:  # hnswlib never returns deleted entries: every hit qualifies
            try:
                labels, d = self._index.knn_query(q, k=k, num_threads=1)
            except RuntimeError:  # hnswlib found fewer than k live neighbours (ef too small for this graph)
                return self._exact(q, None, k)
            return self._rows.row_of(labels), d
        rows = np.empty((len(q), k), np.int64)
        dist = np.empty((len(q), k), np.float32)
        pending = np.arange(len(q))
        fetch = min(live, math.ceil(_OVERFETCH * k * live / count))
        while len(pending):
            try:
                labels, d = self._index.knn_query(q[pending], k=fetch, num_threads=1)
            except RuntimeError:
                break
            r = self._rows.row_of(labels)
            ok = eligible[r]
            enough = ok.sum(axis=1) >= k
            first = np.argsort(~ok, axis=1, kind="stable")[:, :k]  # eligible ones first, distance order kept
            done = pending[enough]
            rows[done] = np.take_along_axis(r, first, 1)[enough]
            dist[done] = np.take_along_axis(d, first, 1)[enough]
            pending = pending[~enough]
            if fetch == live:
                break
            fetch = min(live, fetch * 4)
        if len(pending):
            rows[pending], dist[pending] = self._exact(q[pending], eligible, k)
        return rows, dist

    def _exact(self, q: np.ndarray, eligible: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray]:
        candidates = np.flatnonzero(self._rows["alive"] if eligible is None else eligible)
        if self.bounded:  # every row's distance, in the layout the scan is fast in
            rows, d = knn_transposed(q, self._embedding_t(), k, self.cfg.space, candidates)
        else:  # a few eligible among many rows: scan just those
            found, d = exact_knn(q, self._rows["embedding"][candidates], k, self.cfg.space)
            rows = candidates[found]
        return rows, d.astype(np.float32)

    def _embedding_t(self) -> np.ndarray:
        """The rows' embeddings transposed [E, slots], kept until an `add` changes them (readers may build it
        at once: each builds the same array). The caller holds the read lock."""
        if self._transposed is None:
            self._transposed = np.ascontiguousarray(self._rows["embedding"].T)
        return self._transposed

    def _gather(self, rows: np.ndarray, dist: np.ndarray) -> Hits:
        g = self._rows.gather(rows, _HIT_FIELDS)
        return Hits(ids=g.pop("label"), distance=dist,
                    similarity=self._similarity(rows >= 0, dist), **g)

    def _similarity(self, valid: np.ndarray, dist: np.ndarray) -> np.ndarray:
        """float32 similarity of each hit, 0 for padding (whose distance is inf)."""
        out = np.empty(dist.shape, np.float32)
        _similarities(np.ascontiguousarray(dist, np.float32), valid, _SPACES.index(self.cfg.space), out)
        return out

    def context(self, hits: Hits, pattern_dim: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """What the model consumes: (pattern_context float32 [B, K, P], pattern_mask float32 [B, K], 1 = valid).

        The context vector of one neighbour, P = ``pattern_dim`` wide:

        - ``[0, P-3)``: its embedding, truncated or zero-padded (PCA components come ordered by explained
          variance, so truncation keeps the most informative ones);
        - ``P-3``: its outcome in units of ``outcome_scale`` (the training outcomes' standard deviation),
          clipped to +-8;
        - ``P-2``: its quality in [0, 1];
        - ``P-1``: its similarity to the query (see ``similarity``).

        Missing neighbours (fewer than K hits) are zero vectors with mask 0; a row with no hits is the model's
        regime-only path.
        """
        return self._context(hits.embedding, hits.outcome, hits.quality, hits.similarity, hits.valid, pattern_dim, k)

    def _context(self, embedding: np.ndarray, outcome: np.ndarray, quality: np.ndarray, sim: np.ndarray,
                 valid: np.ndarray, pattern_dim: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The context of hits given as their fields ([B, width], the embedding [B, width, E])."""
        _check_context(pattern_dim, k)
        ctx = np.empty((len(valid), k, pattern_dim), np.float32)
        mask = np.empty((len(valid), k), np.float32)
        _context_rows(np.ascontiguousarray(embedding, np.float32), np.ascontiguousarray(outcome, np.float32),
                      np.ascontiguousarray(quality, np.float32), np.ascontiguousarray(sim, np.float32),
                      np.ascontiguousarray(valid, np.bool_), self.outcome_scale, _OUTCOME_CLIP, ctx, mask)
        return ctx, mask

    # ------------------------------------------------------------ lifecycle

    def expire(self, now: int) -> int:
        """Delete live entries whose ``expires_at`` (non-zero) is at or before ``now``; returns how many."""
        with self._lock.write():
            exp = self._rows["expires_at"]
            rows = np.flatnonzero(self._rows["alive"] & (exp != 0) & (exp <= now))
            self._delete(rows)
        if len(rows):
            log.info("expired %d pattern entries (now=%d), %d live", len(rows), now, len(self))
        return len(rows)

    def update_quality(self, ids: np.ndarray, realised: np.ndarray) -> int:
        """Score entries on what happened to the queries they served, then retire those below the floor.

        For each (id, realised forward return) pair, quality moves by ``quality_alpha`` towards 1 when the
        entry's outcome had the sign of the realised return, towards 0 otherwise (an exponentially weighted hit
        rate). Ids no longer live (expired or retired since the query) are skipped. Returns how many retired.
        """
        ids = np.asarray(ids, np.int64).reshape(-1)
        real = column(realised, "realised", len(ids), np.float64)
        alpha = self.cfg.quality_alpha
        with self._lock.write():
            rows = self._rows.find(ids)
            current = rows >= 0
            quality = self._rows["quality"]
            agree = np.sign(self._rows["outcome"][rows[current]]) == np.sign(real[current])
            for row, hit in zip(rows[current], agree):  # sequential: an id may appear twice
                quality[row] = (1 - alpha) * quality[row] + alpha * float(hit)
            retire = np.flatnonzero(self._rows["alive"] & (quality < self.cfg.quality_floor))
            self._delete(retire)
        if len(retire):
            log.info("retired %d pattern entries below quality %.2f, %d live", len(retire),
                     self.cfg.quality_floor, len(self))
        return len(retire)

    def _delete(self, rows: np.ndarray) -> None:
        """Caller holds the write lock."""
        for label in self._rows["label"][rows]:
            self._index.mark_deleted(int(label))
        self._rows.delete(rows)
        self._refresh_bounds()

    def _refresh_bounds(self) -> None:
        """Bounds over the live entries: a query at or after ``_all_known_at`` and before ``_first_expiry`` may
        see all of them, so it needs no per-entry time filter (an O(n) pass that would dominate a single query).
        None: no live entries, or no live entry ever expires. Caller holds the write lock."""
        live = self._rows["alive"]
        self._live_rows = np.flatnonzero(live)  # what `_scanned_context` scans
        exp = self._rows["expires_at"][live]
        self._all_known_at = int(self._rows["available_at"][live].max()) if live.any() else None
        self._first_expiry = int(exp[exp != 0].min()) if (exp != 0).any() else None

    def _sees_all_live(self, as_of: int) -> bool:
        return (self._all_known_at is not None and self._all_known_at <= as_of
                and (self._first_expiry is None or as_of < self._first_expiry))

    # ------------------------------------------------------------ persistence

    def save(self, directory: str | Path) -> Path:
        """Write index.bin, meta.npz, library.json and SHA256SUMS (``sha256sum -c`` format) into ``directory``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        with self._lock.read():
            self._index.save_index(str(out / "index.bin"))
            self._rows.save(out / "meta.npz")
            info = {"format": _FORMAT, "dim": self.dim, "config": msgspec.to_builtins(self.cfg),
                    "outcome_scale": self.outcome_scale, "instruments": self._rows.instruments,
                    "size": self._rows.size, "live": len(self)}
        (out / "library.json").write_text(json.dumps(info, indent=1))
        write_checksums(out, _FILES)
        return out

    @classmethod
    def load(cls, directory: str | Path, cfg: PatternsConfig | None = None) -> PatternLibrary:
        """Load a saved library after checking every file's SHA-256; a missing or altered file is refused.

        The index's structure (space, M, ef_construction, max_elements) comes from the file; the tunables
        (``ef``, quality and expiry settings) from ``cfg`` when given, else from the file. ``ef`` is set on the
        loaded index (hnswlib does not persist it).
        """
        src = Path(directory)
        verify_checksums(src, _FILES)
        try:
            info = json.loads((src / "library.json").read_text())
            if info.get("format") != _FORMAT:
                raise ModelLoadError(f"{src}/library.json: format {info.get('format')!r}, expected {_FORMAT}")
            saved = msgspec.convert(info["config"], PatternsConfig)
            structure = {f: getattr(saved, f) for f in ("space", "m", "ef_construction", "max_elements")}
            lib_cfg = msgspec.structs.replace(cfg, **structure) if cfg is not None else saved
            lib = cls.__new__(cls)
            lib._setup(int(info["dim"]), lib_cfg, float(info["outcome_scale"]))
            n = int(info["size"])
            instruments = [str(s) for s in info["instruments"]]
        except ModelLoadError:
            raise
        except (KeyError, ValueError, TypeError, OSError, DataError, msgspec.ValidationError) as e:
            raise ModelLoadError(f"{src}: pattern library metadata unreadable: {e}") from None
        lib._rows = PatternRows.load(src / "meta.npz", dim=lib.dim, size=n, limit=lib_cfg.max_elements,
                                     instruments=instruments)
        lib._index = hnswlib.Index(space=lib_cfg.space, dim=lib.dim)
        try:
            lib._index.load_index(str(src / "index.bin"), max_elements=lib_cfg.max_elements,
                                  allow_replace_deleted=True)
        except RuntimeError as e:
            raise ModelLoadError(f"{src}/index.bin: hnswlib cannot load it: {e}") from None
        if lib._index.element_count != n:
            raise ModelLoadError(f"{src}: index holds {lib._index.element_count} elements, metadata {n}")
        lib._index.set_ef(lib_cfg.ef)
        lib._refresh_bounds()
        log.info("loaded pattern library %s: %d live of %d rows, ef=%d", src, len(lib), n, lib_cfg.ef)
        return lib


def _check_context(pattern_dim: int, k: int) -> None:
    if pattern_dim < 4:
        raise ConfigurationError(f"model.pattern_dim: must be >= 4 (embedding + outcome, quality, "
                                 f"similarity), got {pattern_dim}")
    if k < 1:
        raise ConfigurationError(f"model.pattern_k: must be >= 1, got {k}")


@njit(cache=True, nogil=True)
def _known_at(alive: np.ndarray, available_at: np.ndarray, expires_at: np.ndarray, t: int) -> np.ndarray:
    """The rows alive, available at ``t`` and not expired by then (expires_at 0: never), in order: the time
    filter of `_nearest`, as one pass."""
    out = np.empty(len(alive), np.int64)
    n = 0
    for r in range(len(alive)):
        if alive[r] and available_at[r] <= t and (expires_at[r] == 0 or expires_at[r] > t):
            out[n] = r
            n += 1
    return out[:n]


@njit(cache=True, nogil=True)
def _scan_context(q: np.ndarray, vt: np.ndarray, live: np.ndarray, space: int, embedding: np.ndarray,
                  outcome: np.ndarray, quality: np.ndarray, outcome_scale: float, clip: float, ctx: np.ndarray,
                  mask: np.ndarray) -> None:
    """The context of queries q [B, E] among the ``live`` rows: `_knn_rows`, the hits' fields and similarity
    (distances rounded to float32 first, as `_exact` returns them), then `_context_rows`; fewer rows than K
    leave the rest padding."""
    b_n, width = q.shape[0], min(mask.shape[1], live.shape[0])
    idx = np.empty((b_n, width), np.int64)
    dist = np.empty((b_n, width))
    if width:
        _knn_rows(q, vt, live, space, idx, dist)
    emb = np.empty((b_n, width, embedding.shape[1]), np.float32)
    out = np.empty((b_n, width), np.float32)
    qual = np.empty((b_n, width), np.float32)
    sim = np.empty((b_n, width), np.float32)
    for b in range(b_n):
        for j in range(width):
            r = idx[b, j]
            emb[b, j] = embedding[r]
            out[b, j] = outcome[r]
            qual[b, j] = quality[r]
            sim[b, j] = _similarity(np.float32(dist[b, j]), space)
    _context_rows(emb, out, qual, sim, np.ones((b_n, width), np.bool_), outcome_scale, clip, ctx, mask)


@njit(cache=True, nogil=True)
def _context_rows(embedding: np.ndarray, outcome: np.ndarray, quality: np.ndarray, sim: np.ndarray,
                  valid: np.ndarray, outcome_scale: float, clip: float, ctx: np.ndarray, mask: np.ndarray) -> None:
    """The layout `PatternLibrary.context` documents, hit by hit: one compiled call per query, where a dozen
    numpy calls on arrays this small cost more than the copying."""
    k, p = ctx.shape[1], ctx.shape[2]
    e = min(p - 3, embedding.shape[2])
    take = min(k, valid.shape[1])
    ctx[:] = 0.0
    mask[:] = 0.0
    for b in range(valid.shape[0]):
        for j in range(take):
            if not valid[b, j]:
                continue
            ctx[b, j, :e] = embedding[b, j, :e]
            ctx[b, j, p - 3] = min(max(outcome[b, j] / outcome_scale, -clip), clip)
            ctx[b, j, p - 2] = quality[b, j]
            ctx[b, j, p - 1] = sim[b, j]
            mask[b, j] = 1.0
