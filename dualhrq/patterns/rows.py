"""The pattern library's rows: everything known about each entry besides its place in the hnswlib graph.

One row per slot of the index. The fields are declared once, in ``row_dtype``; allocation, growth, gather,
``meta.npz`` and its validation all follow that declaration. Each field is its own contiguous column, not one
numpy structured array: the as-of filter scans ``alive``, ``available_at`` and ``expires_at`` of every row,
and over interleaved records that pass runs ~30x slower.

Labels: a row's hnswlib label is ``generation * limit + row`` (``limit`` = the index's ``max_elements``), so
``label % limit`` is the row and a reused row gets a fresh label. A deleted label is never handed to hnswlib
again, because hnswlib's slot replacement keeps the old label's lookup entry and would later erase the new
one's.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dualhrq.errors import ConfigurationError, ModelLoadError


def row_dtype(dim: int) -> np.dtype:
    """The fields of one row; times are int nanoseconds."""
    return np.dtype([
        ("label", np.int64),  # the entry's hnswlib label (see the module docstring)
        ("alive", np.bool_),  # False once expired or retired: the row is then free for reuse
        ("embedding", np.float32, (dim,)),  # the vector in the index, kept for exact search and for Hits
        ("instrument", np.int32),  # code into the instrument names; 0 is the padding of a blank row
        ("window_start", np.int64),
        ("window_end", np.int64),
        ("available_at", np.int64),  # when the outcome became known: the no-look-ahead filter
        ("expires_at", np.int64),  # 0 = never
        ("outcome", np.float32),  # the realised forward return
        ("regime", np.int32),
        ("quality", np.float32),  # hit rate of the entry's outcome sign, in [0, 1]
    ])


FIELDS: tuple[str, ...] = row_dtype(1).names  # the names do not depend on dim
_SET_BY_APPEND = ("label", "alive", "instrument")  # derived by the store, not passed to append as values


class PatternRows:
    """Rows of the pattern library with slot reuse. Not thread-safe: the library serialises access."""

    def __init__(self, dim: int, limit: int) -> None:
        dtype = row_dtype(dim)
        self.limit = limit  # most rows ever; also the label stride
        self._columns = {name: np.zeros((0, *dtype[name].shape), dtype[name].base) for name in dtype.names}
        self._size = 0  # rows ever used, deleted ones included
        self._free: list[int] = []  # deleted rows, reused first
        self._codes: dict[str, int] = {}  # instrument name -> code
        self._names = np.array([""])  # code -> instrument name

    @property
    def size(self) -> int:
        """Rows ever used, deleted ones included (= hnswlib's element count)."""
        return self._size

    @property
    def live(self) -> int:
        return self._size - len(self._free)

    @property
    def instruments(self) -> list[str]:
        """Instrument names in code order (code = position + 1)."""
        return list(self._codes)

    def __getitem__(self, field: str) -> np.ndarray:
        """One field over the used rows: a view, so writes go through (until the next append grows the store)."""
        return self._columns[field][:self._size]

    def append(self, instrument: Sequence[str], **values: np.ndarray) -> np.ndarray:
        """Store len(instrument) new live entries, reusing deleted rows first; returns their rows.

        ``values`` gives every other field (see ``row_dtype``) as n values: a reused row must not keep
        anything of its previous entry.
        """
        expected = set(self._columns) - set(_SET_BY_APPEND)
        if set(values) != expected:
            raise TypeError(f"append: got fields {sorted(values)}, expected {sorted(expected)}")
        n = len(instrument)
        if n > self.limit - self.live:
            raise ConfigurationError(
                f"patterns.max_elements: library full ({self.live} live of {self.limit}); "
                f"cannot add {n}: raise max_elements and rebuild, or expire entries")
        reused = self._free[:n]
        del self._free[:n]
        fresh = np.arange(self._size, self._size + n - len(reused))
        self._reserve(self._size + len(fresh))
        self._size += len(fresh)
        label = self._columns["label"]
        label[reused] += self.limit
        label[fresh] = fresh
        rows = np.concatenate([np.array(reused, np.int64), fresh])
        for name, v in values.items():
            self._columns[name][rows] = v
        self._columns["instrument"][rows] = self._encode(instrument)
        self._columns["alive"][rows] = True
        return rows

    def _encode(self, instrument: Sequence[str]) -> list[int]:
        """Codes of the names, new names getting the next code."""
        codes = [self._codes.setdefault(s, len(self._codes) + 1) for s in instrument]
        self._names = np.array(["", *self._codes])
        return codes

    def _reserve(self, count: int) -> None:
        """Room for ``count`` rows; capacity doubles (up to ``limit``) so appends in small batches stay cheap."""
        capacity = len(self._columns["label"])
        if count <= capacity:
            return
        grown = min(self.limit, max(count, 2 * capacity))
        for name, col in self._columns.items():
            new = np.zeros((grown, *col.shape[1:]), col.dtype)
            new[:capacity] = col
            self._columns[name] = new

    def delete(self, rows: np.ndarray) -> None:
        """Mark live rows deleted and free them for reuse (the caller removes their labels from the index)."""
        self._columns["alive"][rows] = False
        self._free.extend(int(r) for r in rows)

    def row_of(self, labels: np.ndarray) -> np.ndarray:
        """The row of each label (int64; hnswlib hands labels back as uint64)."""
        return labels.astype(np.int64) % self.limit

    def find(self, labels: np.ndarray) -> np.ndarray:
        """The row of each label that names a live entry, -1 for the rest (never added, deleted, or reused)."""
        labels = np.asarray(labels, np.int64)
        rows = self.row_of(labels)
        known = (labels >= 0) & (rows < self._size)
        known[known] &= (self._columns["label"][rows[known]] == labels[known]) & self._columns["alive"][rows[known]]
        return np.where(known, rows, -1)

    def gather(self, rows: np.ndarray, fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Copies of ``fields`` (default: all) at ``rows`` (any shape; instrument as names); row -1 reads as a
        blank row: label -1, instrument "", everything else 0."""
        blank = rows < 0
        padded = np.count_nonzero(blank) > 0  # not blank.any(): a third of the cost on the few rows of a query
        r = np.where(blank, 0, rows) if padded else rows
        out = {}
        for name in self._columns if fields is None else fields:
            out[name] = self._columns[name][r]  # fancy indexing copies: the values outlive the caller's lock
            if padded:
                out[name][blank] = -1 if name == "label" else 0
        if "instrument" in out:
            out["instrument"] = self._names[out["instrument"]]
        return out

    def save(self, path: Path) -> None:
        """Write the used rows to an .npz file, one array per field."""
        np.savez(path, **{name: col[:self._size] for name, col in self._columns.items()})

    @classmethod
    def load(cls, path: Path, *, dim: int, size: int, limit: int, instruments: Sequence[str]) -> PatternRows:
        """Read what ``save`` wrote: every field present, with ``size`` rows, its dtype and its per-row shape."""
        if size > limit:
            raise ModelLoadError(f"{path}: {size} rows, more than max_elements {limit}")
        dtype = row_dtype(dim)
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in dtype.names if name in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise ModelLoadError(f"{path}: unreadable: {e}") from None
        for name in dtype.names:
            want, shape = dtype[name].base, (size, *dtype[name].shape)
            if name not in arrays:
                raise ModelLoadError(f"{path}: field {name!r} missing")
            if arrays[name].dtype != want or arrays[name].shape != shape:
                raise ModelLoadError(f"{path}: field {name!r} is {arrays[name].dtype} {list(arrays[name].shape)}, "
                                     f"expected {want} {list(shape)}")
        codes = arrays["instrument"]
        if size and (codes.min() < 1 or codes.max() > len(instruments)):
            raise ModelLoadError(f"{path}: field 'instrument' has codes {codes.min()}..{codes.max()}, "
                                 f"but {len(instruments)} instruments are named")
        store = cls(dim, limit)
        store._columns = arrays
        store._size = size
        store._free = np.flatnonzero(~arrays["alive"]).tolist()
        store._encode(instruments)
        return store
