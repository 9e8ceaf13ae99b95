"""The user's own OHLCV files (CSV or Parquet) -> a validated Dataset, or an error naming the first bad row.

Columns: timestamp, open, high, low, close, volume, matched case-insensitively; other columns are ignored.
Timestamps are parsed by pandas; naive ones are taken as UTC, numbers as epoch seconds, ms, us or ns by
magnitude. By default a timestamp marks the bar's OPEN (the usual convention of data vendors); it is moved to
the bar's close (open + the most common spacing), the convention of `dualhrq.data.bars`. Pass
``timestamps="close"`` for files stamped at the close.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from dualhrq.data.bars import COLUMN_NAMES, Bars, BarsError, Dataset
from dualhrq.data.resample import timeframe_name
from dualhrq.errors import DataError

log = logging.getLogger(__name__)

Stamp = Literal["open", "close"]
_SUFFIXES = {".csv": "csv", ".gz": "csv", ".parquet": "parquet", ".pq": "parquet"}
# Epoch numbers: the unit whose value range a date between 1973 and 5138 falls into.
_EPOCH_UNITS = ((1e11, "s"), (1e14, "ms"), (1e17, "us"), (float("inf"), "ns"))


def _row_text(row: int) -> str:
    return f"data row {row + 1} (counting from 1 after the header)"


def _cell(value: object) -> str:
    """A file's cell as the user wrote it: 'abc', 1.5, not np.float64(1.5)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _read(path: Path) -> pd.DataFrame:
    kind = _SUFFIXES.get(path.suffix.lower())
    if kind is None or (path.suffix.lower() == ".gz" and not path.name.lower().endswith(".csv.gz")):
        raise DataError(f"{path}: unsupported file type; expected .csv, .csv.gz, .parquet or .pq")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return pd.read_csv(path) if kind == "csv" else pd.read_parquet(path)
    except (ValueError, OSError, pd.errors.ParserError) as e:
        raise DataError(f"{path}: cannot read as {kind}: {e}") from None


def _columns(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """The six OHLCV columns under their lower-case names, in order."""
    if frame.index.name and str(frame.index.name).strip().lower() == "timestamp":
        frame = frame.reset_index()  # Parquet files often keep the time as the index
    by_lower: dict[str, str] = {}
    for col in frame.columns:
        key = str(col).strip().lower()
        if key in by_lower:
            raise DataError(f"{source}: columns {by_lower[key]!r} and {col!r} are the same name ignoring case")
        by_lower[key] = col
    missing = [n for n in COLUMN_NAMES.values() if n not in by_lower]
    if missing:
        raise DataError(f"{source}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, frame.columns))}")
    return pd.DataFrame({n: frame[by_lower[n]].to_numpy() for n in COLUMN_NAMES.values()})


def _timestamps(col: pd.Series, source: str) -> np.ndarray:
    """int64 ns since the epoch (UTC); NaT (int64 min) where a cell does not parse."""
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        values = pd.to_numeric(col, errors="coerce")
        size = float(np.nanmax(np.abs(values))) if values.notna().any() else 0.0
        unit = next(u for bound, u in _EPOCH_UNITS if size < bound)
        parsed = pd.to_datetime(values, unit=unit, utc=True, errors="coerce")
    else:
        try:
            parsed = pd.to_datetime(col, utc=True, errors="coerce", format="mixed")
        except (ValueError, TypeError) as e:
            raise DataError(f"{source}: timestamp: cannot parse the column: {e}") from None
    return pd.DatetimeIndex(parsed).as_unit("ns").asi8


def bars_from_frame(frame: pd.DataFrame, source: str, timestamps: Stamp = "open") -> tuple[Bars, str]:
    """An OHLCV frame -> (validated Bars stamped at the close, timeframe name). Raises DataError naming the
    first bad data row and its column, e.g. 'x.csv: data row 18 (...): close: must be > 0 (got '-1')'."""
    if timestamps not in ("open", "close"):
        raise DataError(f"timestamps: must be 'open' or 'close', got {timestamps!r}")
    raw = _columns(frame, source)
    if len(raw) < 2:
        raise DataError(f"{source}: {len(raw)} data rows; need at least 2 to tell the bar length")
    t = _timestamps(raw["timestamp"], source)
    unparsed = np.flatnonzero(t == np.iinfo(np.int64).min)
    n = int(unparsed[0]) if unparsed.size else len(raw)
    prices = {k: pd.to_numeric(raw[name], errors="coerce").to_numpy(np.float64)
              for k, name in COLUMN_NAMES.items() if k != "t"}
    bars = Bars(t, *(prices[k] for k in "ohlcv"))
    try:
        bars.slice(0, n).validate()  # every check looks back at most one row: errors before n are all found
    except BarsError as e:
        name = COLUMN_NAMES[e.field]
        stamps = raw["timestamp"]
        shown = f"{_cell(stamps.iloc[e.row])} is not after {_cell(stamps.iloc[e.row - 1])}" if e.field == "t" \
            else _cell(raw[name].iloc[e.row])
        raise DataError(f"{source}: {_row_text(e.row)}: {name}: {e.rule} (got {shown})") from None
    if n < len(raw):
        raise DataError(f"{source}: {_row_text(n)}: timestamp: cannot parse {_cell(raw['timestamp'].iloc[n])}")
    spacing = np.diff(t)
    steps, counts = np.unique(spacing, return_counts=True)
    bar_ns = int(steps[np.argmax(counts)])  # the most common spacing: gaps (weekends, holidays) are rarer
    _check_one_timeframe(spacing, steps, counts, bar_ns, source, raw["timestamp"])
    if timestamps == "open":
        bars = Bars(t + bar_ns, *(prices[k] for k in "ohlcv"))
    for k in COLUMN_NAMES:
        getattr(bars, k).flags.writeable = False  # datasets are cached and shared: nobody may edit them
    return bars, timeframe_name(bar_ns)


# A spacing other than the bar length this common is no closure: daily bars' weekends are about a fifth of theirs.
MIXED_SHARE = 0.3


def _length(ns: int) -> str:
    try:
        return timeframe_name(ns)
    except DataError:  # not a whole number of seconds
        return f"{ns} ns"


def _check_one_timeframe(spacing: np.ndarray, steps: np.ndarray, counts: np.ndarray, bar_ns: int, source: str,
                         stamps: pd.Series) -> None:
    """One bar length per file: bars less than half the most common spacing apart are of another timeframe
    (DataError naming the row); another spacing as common as MIXED_SHARE of them is a second timeframe in the
    file (a warning: a market with such closures is possible)."""
    if 2 * steps[0] < bar_ns:  # half a bar: session-aligned first bars (09:30, then 10:00), DST days pass
        row = int(np.flatnonzero(2 * spacing < bar_ns)[0]) + 1
        raise DataError(f"{source}: {_row_text(row)}: timestamp: {_cell(stamps.iloc[row])} is "
                        f"{_length(int(spacing[row - 1]))} after the previous row, less than half the file's bar "
                        f"length {_length(bar_ns)} (the most common spacing): one timeframe per file")
    share = counts / counts.sum()
    other = [i for i in np.argsort(-counts) if steps[i] != bar_ns and share[i] >= MIXED_SHARE]
    if other:
        i = other[0]
        row = int(np.flatnonzero(spacing == steps[i])[0]) + 1
        log.warning("%s: %.0f%% of consecutive bars are %s apart (from %s), not the bar length %s: two timeframes "
                    "in one file? They are read as %s bars with gaps", source, 100 * share[i],
                    _length(int(steps[i])), _row_text(row), timeframe_name(bar_ns), timeframe_name(bar_ns))


def load_ohlcv(path: str | Path, timestamps: Stamp = "open", instrument: str = "") -> Dataset:
    """Load a user's CSV/Parquet OHLCV file. The instrument defaults to the file name's stem, upper-cased."""
    p = Path(path)
    frame = _read(p)
    bars, timeframe = bars_from_frame(frame, str(p), timestamps)
    name = p.name.split(".")[0]
    return Dataset(name=name, instrument=instrument or name.upper(), timeframe=timeframe, bars=bars, origin=str(p))
