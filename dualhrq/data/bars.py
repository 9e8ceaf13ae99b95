"""OHLCV bars as plain numpy columns, with the one validation every entry point shares.

Timestamps mark when a bar became KNOWN: ``t`` is the bar's close time (its period end) in nanoseconds since
the epoch, UTC. Causality is then a single comparison everywhere: a bar is visible at time x iff ``t <= x``,
for fine bars, for coarse bars resampled from them, and for bars a client sends over the wire.

The user's files, the bundled datasets and the runtime's requests all become `Bars` through `validate`, so a
file the loader accepts is a request the runtime accepts and vice versa.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

from dualhrq.errors import DataError

# Long names for messages: the wire and the arrays use the short ones.
COLUMN_NAMES: dict[str, str] = {"t": "timestamp", "o": "open", "h": "high", "l": "low", "c": "close", "v": "volume"}

# Bar times are ns since the epoch from 1900 to 2200: a time beyond is a unit mistake or garbage, and near the
# end of int64 a bar's spacing added to it would wrap around.
T_MIN_NS = -2_208_988_800 * 10**9  # 1900-01-01 UTC
T_MAX_NS = 7_258_118_400 * 10**9  # 2200-01-01 UTC
T_RANGE = "must be a time from 1900 to 2200 in ns since the epoch"


class BarsError(DataError):
    """The first bad bar of the series ``where`` ('fine', 'coarse' or ''): ``row`` (0-based index), ``field``
    (t/o/h/l/c/v), the ``rule`` it breaks and the offending ``value``, kept apart so the loader and the
    runtime can word their own messages (the runtime's error field: f"{where}.{field}[{row}]")."""

    def __init__(self, row: int, field: str, rule: str, value: object, where: str = "") -> None:
        prefix = f"{where}: " if where else ""
        super().__init__(f"{prefix}row {row}: {COLUMN_NAMES[field]}: {rule} (got {value})")
        self.row, self.field, self.rule, self.value, self.where = row, field, rule, value, where


@dataclass(frozen=True)
class Bars:
    """One timeframe's bars, oldest first: t int64 ns (bar close time), o/h/l/c/v float64."""

    t: np.ndarray
    o: np.ndarray
    h: np.ndarray
    l: np.ndarray  # noqa: E741 - the wire name
    c: np.ndarray
    v: np.ndarray

    def __len__(self) -> int:
        return len(self.t)

    def slice(self, start: int | None = None, stop: int | None = None) -> Bars:
        """Bars[start:stop] as views (no copy)."""
        s = slice(start, stop)  # spelled out: dataclasses.fields() costs more than the six views on a request
        return Bars(self.t[s], self.o[s], self.h[s], self.l[s], self.c[s], self.v[s])

    @property
    def columns(self) -> tuple[np.ndarray, ...]:
        """(t, o, h, l, c, v)."""
        return self.t, self.o, self.h, self.l, self.c, self.v

    def until(self, time_ns: int) -> Bars:
        """The bars known at ``time_ns`` (those with t <= time_ns)."""
        return self.slice(0, int(np.searchsorted(self.t, time_ns, side="right")))

    @classmethod
    def from_columns(cls, columns: Mapping[str, Sequence[float] | np.ndarray], where: str = "bars") -> Bars:
        """Wire or dict form ``{t, o, h, l, c, v}`` -> validated Bars (raises BarsError / DataError naming
        ``where``, e.g. 'fine')."""
        missing = [k for k in COLUMN_NAMES if k not in columns]
        if missing:
            raise DataError(f"{where}: missing column(s) {', '.join(missing)}")
        extra = sorted(set(columns) - set(COLUMN_NAMES))
        if extra:
            raise DataError(f"{where}: unknown column(s) {', '.join(extra)}")
        lengths = {k: len(columns[k]) for k in COLUMN_NAMES}
        if len(set(lengths.values())) > 1:
            raise DataError(f"{where}: columns differ in length: {lengths}")
        t = np.asarray(columns["t"])
        if t.size and (t.dtype.kind not in "iu" or (t.dtype.kind == "u" and int(t.max()) > T_MAX_NS)):
            raw = list(columns["t"])
            whole = all(isinstance(x, (int, np.integer)) for x in raw)  # ints that int64 cannot hold
            beyond = [i for i, x in enumerate(raw) if whole and not T_MIN_NS <= int(x) < T_MAX_NS]
            if beyond:
                raise BarsError(beyond[0], "t", T_RANGE, int(raw[beyond[0]]), where)
            raise DataError(f"{where}: {COLUMN_NAMES['t']}: must be integers (ns since the epoch), got {t.dtype}")
        return cls(t.astype(np.int64), *(np.asarray(columns[k], dtype=np.float64) for k in "ohlcv")).validate(where)

    @classmethod
    def checked(cls, t: np.ndarray, o: np.ndarray, h: np.ndarray, l: np.ndarray, c: np.ndarray,  # noqa: E741
                v: np.ndarray, where: str = "") -> Bars:
        """Validated Bars of columns already 1-D, of one length and contiguous (t int64, the others float64), as
        the server reads a request's: one compiled pass, and `validate`'s search only when it fails."""
        bars = cls(t, o, h, l, c, v)
        return bars if len(t) == 0 or _clean_rows(t, o, h, l, c, v) else bars.validate(where)

    def validate(self, where: str = "") -> Bars:
        """Raise BarsError for the first bad row (ties: the first failed check below); return self when clean."""
        n = len(self.t)
        for name, a in zip(COLUMN_NAMES, self.columns):
            if a.ndim != 1 or len(a) != n:
                raise DataError(f"{where or 'bars'}: {COLUMN_NAMES[name]}: expected a 1-D array of {n} values, "
                                f"got shape {a.shape}")
        if _clean(self):
            return self
        # Something is wrong: only now search every check for the first bad row (the message names it).
        checks: list[tuple[str, np.ndarray, str]] = []
        for k in "ohlc":
            a = getattr(self, k)
            checks += [(k, ~np.isfinite(a), "must be a finite number"), (k, ~(a > 0), "must be > 0")]
        checks += [("v", ~np.isfinite(self.v), "must be a finite number"), ("v", ~(self.v >= 0), "must be >= 0"),
                   ("h", self.h < np.maximum(self.o, self.c), "must be >= max(open, close)"),
                   ("l", self.l > np.minimum(self.o, self.c), "must be <= min(open, close)")]
        # A time not after its predecessor is the later row's fault.
        checks += [("t", (self.t < T_MIN_NS) | (self.t >= T_MAX_NS), T_RANGE),
                   ("t", np.concatenate([[False], self.t[1:] <= self.t[:-1]]), "must be after the previous row's")]
        first = None
        for field, bad, reason in checks:
            idx = np.flatnonzero(bad)
            if idx.size and (first is None or idx[0] < first[0]):
                first = (int(idx[0]), field, reason)
        if first is not None:
            row, field, rule = first
            value = getattr(self, field)[row]
            order = field == "t" and rule != T_RANGE
            raise BarsError(row, field, rule, f"{value} <= {self.t[row - 1]}" if order else value, where)
        return self


def _clean(bars: Bars) -> bool:
    """Whether every row passes `Bars.validate`'s checks: one compiled pass, so that the per-row search for the
    first bad row is paid only by bad input."""
    if len(bars.t) == 0:
        return True
    t, *prices = bars.columns
    return _clean_rows(np.ascontiguousarray(t, np.int64), *(np.ascontiguousarray(x, np.float64) for x in prices))


@njit(cache=True, nogil=True)
def _clean_rows(t: np.ndarray, o: np.ndarray, h: np.ndarray, l: np.ndarray, c: np.ndarray,  # noqa: E741
                v: np.ndarray) -> bool:
    """Every row's checks, as `Bars.validate` words them; a NaN fails every comparison it is in."""
    if t[0] < T_MIN_NS or t[len(t) - 1] >= T_MAX_NS:  # the rows' order is checked below: the ends suffice
        return False
    for i in range(len(t)):
        for x in (o[i], h[i], l[i], c[i]):
            if not (x > 0.0 and x < np.inf):
                return False
        if not (v[i] >= 0.0 and v[i] < np.inf):
            return False
        if not (h[i] >= max(o[i], c[i]) and l[i] <= min(o[i], c[i])):
            return False
        if i and not t[i] > t[i - 1]:  # compared, not subtracted (a difference could overflow), as the row check
            return False
    return True


@dataclass(frozen=True)
class Dataset:
    """One instrument's bars at one (fine) timeframe, and where they came from."""

    name: str
    instrument: str
    timeframe: str  # the fine bar length in the vocabulary's spelling: '1h', '1d', '5m'
    bars: Bars
    origin: str  # the package object or the file the bars were read from
