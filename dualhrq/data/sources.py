"""The bundled real datasets (shipped inside installed packages, no network) and the one way to load any data.

- eurusd_1h: EUR/USD hourly, 5,000 bars, 2017-04 -> 2018-02 (backtesting.test.EURUSD)
- goog_1d:   Alphabet (GOOG) daily, 2004 -> 2013 (backtesting.test.GOOG)
- sp500_1d:  S&P 500 index daily, 1999 -> 2018 (arch.data.sp500)
- nasdaq_1d: NASDAQ Composite daily, 1999 -> 2018 (arch.data.nasdaq)

All four are stamped at the bar's open in their packages and become close-stamped Bars like any user file.
The arch sets' unadjusted Close is used (not Adj Close): it is the price consistent with Open/High/Low.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cache, lru_cache
from pathlib import Path

import pandas as pd

from dualhrq.config import DataConfig
from dualhrq.data.bars import Dataset
from dualhrq.data.loader import Stamp, bars_from_frame, load_ohlcv
from dualhrq.errors import DataError


# Imported on first use: neither package is needed to serve.
def _backtesting(name: str) -> Callable[[], pd.DataFrame]:
    return lambda: getattr(importlib.import_module("backtesting.test"), name)


def _arch(name: str) -> Callable[[], pd.DataFrame]:
    return lambda: importlib.import_module(f"arch.data.{name}").load()


@dataclass(frozen=True)
class _Source:
    instrument: str
    origin: str
    frame: Callable[[], pd.DataFrame]  # OHLCV with a datetime index of bar open times


_BUNDLED: dict[str, _Source] = {
    "eurusd_1h": _Source("EURUSD", "backtesting.test.EURUSD", _backtesting("EURUSD")),
    "goog_1d": _Source("GOOG", "backtesting.test.GOOG", _backtesting("GOOG")),
    "sp500_1d": _Source("SP500", "arch.data.sp500", _arch("sp500")),
    "nasdaq_1d": _Source("NASDAQ", "arch.data.nasdaq", _arch("nasdaq")),
}


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    instrument: str
    timeframe: str
    bars: int
    start: datetime  # close time of the first bar, UTC
    end: datetime  # close time of the last bar, UTC
    origin: str


def _utc(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc)


def info(dataset: Dataset) -> DatasetInfo:
    b = dataset.bars
    return DatasetInfo(dataset.name, dataset.instrument, dataset.timeframe, len(b), _utc(int(b.t[0])),
                       _utc(int(b.t[-1])), dataset.origin)


@cache
def _bundled(name: str) -> Dataset:
    src = _BUNDLED[name]
    frame = src.frame().rename_axis("timestamp").reset_index()
    bars, timeframe = bars_from_frame(frame, src.origin, timestamps="open")
    return Dataset(name=name, instrument=src.instrument, timeframe=timeframe, bars=bars, origin=src.origin)


def _file(path: Path, timestamps: Stamp) -> Dataset:
    """A user's file, parsed once per process while it stays unchanged (one command reads it in several
    places: training, the pattern library, the run ledger)."""
    if not path.is_file():
        return load_ohlcv(path, timestamps=timestamps)  # its error names the path
    st = path.stat()
    return _parsed(path, str(path.resolve()), st.st_mtime_ns, st.st_size, timestamps)


# Bounded: a long-lived process (a notebook, a test run) that re-reads a file as it changes would otherwise keep
# every older parse; one command reads a few files at most.
@lru_cache(maxsize=8)
def _parsed(path: Path, _resolved: str, _mtime_ns: int, _size: int, timestamps: Stamp) -> Dataset:
    return load_ohlcv(path, timestamps=timestamps)  # the cache key: which file, in which state, read how


def list_datasets() -> list[DatasetInfo]:
    """The bundled datasets, loaded (they are small and cached) so the figures are real."""
    return [info(_bundled(name)) for name in _BUNDLED]


def load_dataset(name_or_path: str | Path, timestamps: Stamp = "open", where: str | None = None) -> Dataset:
    """A bundled dataset by name, or a user's CSV/Parquet file by path (``timestamps`` applies to files only:
    see `dualhrq.data.loader`). ``where``: the setting that named it, which its errors then start with."""
    key = str(name_or_path)
    if key in _BUNDLED:
        return _bundled(key)
    path = Path(key)
    if path.suffix or path.exists():
        try:
            return _file(path, timestamps)
        except DataError as e:
            raise (DataError(f"{where}: {e}") if where else e) from None
    raise DataError(f"{where or 'data.dataset'}: {key!r} is neither a bundled dataset ({', '.join(_BUNDLED)}) nor a "
                    "CSV/Parquet path")


def load_datasets(data_cfg: DataConfig) -> list[Dataset]:
    """Every dataset of ``data.dataset`` (one or a list), checked to share one fine timeframe and to name
    distinct instruments: one model reads one timeframe and tells instruments apart by name."""
    out: list[Dataset] = []
    for i, name in enumerate(data_cfg.datasets):
        where = "data.dataset" if isinstance(data_cfg.dataset, str) else f"data.dataset[{i}]"
        ds = load_dataset(name, data_cfg.timestamps, where)
        if out and ds.timeframe != out[0].timeframe:
            raise DataError(f"{where}: {name} holds {ds.timeframe} bars, but data.dataset[0] ({out[0].name}) holds "
                            f"{out[0].timeframe} bars; one model reads one fine timeframe")
        twin = next((o for o in out if o.instrument == ds.instrument), None)
        if twin is not None:
            raise DataError(f"{where}: {name} is instrument {ds.instrument}, as {twin.name} is; a list needs one "
                            "dataset per instrument")
        out.append(ds)
    return out
