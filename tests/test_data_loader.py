"""Bundled datasets, the user's CSV/Parquet loader and the Bars validation the runtime shares."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from subcommand import run_subcommand

from dualhrq.data.bars import Bars, BarsError
from dualhrq.data.commands import register
from dualhrq.data.loader import load_ohlcv
from dualhrq.data.sources import list_datasets, load_dataset
from dualhrq.errors import ConfigurationError, DataError

HOUR = 3600 * 10**9


def _frame(n: int = 30) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    c = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    o = np.concatenate([[100.0], c[:-1]])
    return pd.DataFrame({
        "Timestamp": pd.date_range("2021-03-01 09:00", periods=n, freq="h").strftime("%Y-%m-%d %H:%M:%S"),
        "OPEN": o, "High": np.maximum(o, c) + 0.1, "low": np.minimum(o, c) - 0.1, "Close": c,
        "Volume": rng.integers(0, 1000, n), "Extra": "ignored"})


def _ns(stamps: pd.Series) -> np.ndarray:
    return pd.DatetimeIndex(pd.to_datetime(stamps, utc=True)).as_unit("ns").asi8


def _write_csv(tmp_path: Path, frame: pd.DataFrame) -> Path:
    path = tmp_path / "mine.csv"
    frame.to_csv(path, index=False)
    return path


def test_eurusd_is_bundled_with_its_real_size_and_span():
    ds = load_dataset("eurusd_1h")
    assert (ds.instrument, ds.timeframe, len(ds.bars)) == ("EURUSD", "1h", 5000)
    first = datetime.fromtimestamp(ds.bars.t[0] / 1e9, tz=timezone.utc)
    assert first == datetime(2017, 4, 19, 10, tzinfo=timezone.utc)  # the 09:00 bar, known at its close


@pytest.mark.slow  # imports the arch data sets too (several seconds of imports)
def test_all_bundled_datasets_are_listed_and_valid():
    infos = {i.name: i for i in list_datasets()}
    assert set(infos) == {"eurusd_1h", "goog_1d", "sp500_1d", "nasdaq_1d"}
    assert infos["goog_1d"].start.year == 2004 and infos["goog_1d"].end.year == 2013
    for name in ("sp500_1d", "nasdaq_1d"):
        assert infos[name].timeframe == "1d" and infos[name].start.year == 1999 and infos[name].bars > 5000
        load_dataset(name).bars.validate()


def test_csv_loads_case_insensitively_and_moves_open_stamps_to_the_close(tmp_path):
    frame = _frame()
    ds = load_ohlcv(_write_csv(tmp_path, frame))
    assert ds.timeframe == "1h" and ds.instrument == "MINE"
    np.testing.assert_array_equal(ds.bars.t, _ns(frame["Timestamp"]) + HOUR)
    np.testing.assert_array_equal(ds.bars.c, frame["Close"].to_numpy())
    np.testing.assert_array_equal(ds.bars.v, frame["Volume"].to_numpy(float))


def test_close_stamped_files_keep_their_timestamps(tmp_path):
    frame = _frame()
    ds = load_ohlcv(_write_csv(tmp_path, frame), timestamps="close")
    np.testing.assert_array_equal(ds.bars.t, _ns(frame["Timestamp"]))


def test_a_file_is_parsed_once_while_unchanged_and_again_once_it_changes(tmp_path):
    path = _write_csv(tmp_path, _frame(30))
    first = load_dataset(path)
    assert load_dataset(path) is first
    _write_csv(tmp_path, _frame(40))
    assert len(load_dataset(path).bars) == 40


def test_parquet_loads_the_same_bars_as_csv(tmp_path):
    frame = _frame()
    frame.to_parquet(tmp_path / "mine.parquet", index=False)
    a, b = load_ohlcv(_write_csv(tmp_path, frame)).bars, load_ohlcv(tmp_path / "mine.parquet").bars
    for k in "tohlcv":
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))


def test_epoch_millisecond_timestamps_are_understood(tmp_path):
    frame = _frame()
    ms = _ns(frame["Timestamp"]) // 10**6
    ds = load_ohlcv(_write_csv(tmp_path, frame.assign(Timestamp=ms)))
    np.testing.assert_array_equal(ds.bars.t, ms * 10**6 + HOUR)


def _corrupt(frame: pd.DataFrame, row: int, column: str, value: object) -> pd.DataFrame:
    frame = frame.astype({column: object}) if not isinstance(value, (int, float)) else frame.copy()
    frame.loc[row - 1, column] = value  # row is 1-based, like the messages
    return frame


@pytest.mark.parametrize("column, value, expect", [
    ("Close", -1.0, "close: must be > 0"),
    ("OPEN", float("nan"), "open: must be a finite number"),
    ("Close", "abc", "close: must be a finite number (got 'abc')"),
    ("Volume", -5, "volume: must be >= 0"),
    ("High", 1.0, "high: must be >= max(open, close)"),
    ("low", 1e9, "low: must be <= min(open, close)"),
    ("Timestamp", "2021-03-01 09:00:00", "timestamp: must be after the previous row's"),
    ("Timestamp", "not a time", "timestamp: cannot parse 'not a time'"),
])
def test_first_bad_row_is_reported_by_number_and_column(tmp_path, column, value, expect):
    frame = _corrupt(_frame(), 17, column, value)
    with pytest.raises(DataError) as e:
        load_ohlcv(_write_csv(tmp_path, frame))
    assert "data row 17 (counting from 1 after the header)" in str(e.value)
    assert expect in str(e.value)


def test_the_earliest_of_several_bad_rows_is_reported(tmp_path):
    frame = _corrupt(_corrupt(_frame(), 20, "Timestamp", "garbage"), 9, "Close", 0.0)
    with pytest.raises(DataError, match=r"data row 9 .*close: must be > 0"):
        load_ohlcv(_write_csv(tmp_path, frame))


def test_missing_columns_are_named(tmp_path):
    with pytest.raises(DataError, match="missing column.*volume"):
        load_ohlcv(_write_csv(tmp_path, _frame().drop(columns="Volume")))


def test_unsupported_files_and_unknown_names_are_refused(tmp_path):
    (tmp_path / "bars.txt").write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        load_ohlcv(tmp_path / "bars.txt")
    with pytest.raises(DataError, match="neither a bundled dataset"):
        load_dataset("no_such_set")
    with pytest.raises(DataError, match="file not found"):
        load_dataset(tmp_path / "absent.csv")


def _wire(n: int = 5) -> dict[str, list]:
    return {"t": [HOUR * (i + 1) for i in range(n)], "o": [1.0] * n, "h": [1.2] * n, "l": [0.9] * n,
            "c": [1.1] * n, "v": [10.0] * n}


def test_wire_bars_convert_with_the_same_validation():
    bars = Bars.from_columns(_wire())
    assert len(bars) == 5 and bars.t.dtype == np.int64 and bars.c.dtype == np.float64
    bad = _wire()
    bad["c"][3] = float("inf")
    with pytest.raises(BarsError) as e:
        Bars.from_columns(bad, where="fine")
    assert (e.value.where, e.value.row, e.value.field) == ("fine", 3, "c")
    assert "fine: row 3: close: must be a finite number (got inf)" in str(e.value)


@pytest.mark.parametrize("change, expect", [
    (lambda d: d.pop("v"), "missing column"),
    (lambda d: d.update(x=[1]), "unknown column"),
    (lambda d: d["o"].pop(), "differ in length"),
    (lambda d: d.update(t=[1.5] * 5), "must be integers"),
])
def test_malformed_wire_bars_are_refused(change, expect):
    d = _wire()
    change(d)
    with pytest.raises(DataError, match=expect):
        Bars.from_columns(d)


@pytest.mark.parametrize("field", list("ohlcv"))
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 0.0, -1.0, 5.0, 0.5])
@pytest.mark.parametrize("row", [0, 2, 4])
def test_any_single_bad_value_is_caught_in_any_row(field, value, row):
    # The clean-series shortcut must never let through what the row-by-row checks refuse.
    d = _wire()
    d[field][row] = value
    bars = Bars(np.array(d["t"], np.int64), *(np.array(d[k], np.float64) for k in "ohlcv"))
    o, h, l, c, v = (getattr(bars, k)[row] for k in "ohlcv")  # noqa: E741
    bad = (not all(np.isfinite([o, h, l, c, v])) or min(o, h, l, c) <= 0 or v < 0 or h < max(o, c)
           or l > min(o, c))
    if not bad:
        assert bars.validate() is bars
        return
    with pytest.raises(BarsError) as e:
        bars.validate("fine")
    assert e.value.row == row


@pytest.mark.parametrize("t", [[1, 2, 2, 4, 5], [1, 2, 3, 5, 4], [5, 2, 3, 4, 6]])
def test_a_time_not_after_its_predecessor_is_caught(t):
    d = _wire()
    d["t"] = t
    with pytest.raises(BarsError, match="timestamp: must be after the previous row's"):
        Bars.from_columns(d)


def test_bars_slice_and_until_select_the_known_bars():
    bars = Bars.from_columns(_wire(6))
    assert len(bars.slice(2)) == 4 and bars.slice(1, 3).t.tolist() == [2 * HOUR, 3 * HOUR]
    assert bars.until(3 * HOUR).t.tolist() == [HOUR, 2 * HOUR, 3 * HOUR]
    assert len(bars.until(HOUR - 1)) == 0


def _run_data_command(*argv: str) -> int:
    return run_subcommand(register, *argv)


def test_data_show_prints_a_users_file_and_refuses_a_bad_one(tmp_path, capsys):
    path = _write_csv(tmp_path, _frame(50))
    assert _run_data_command("data", "show", str(path), "--rows", "2") == 0
    out = capsys.readouterr().out
    assert "mine: MINE, 1h bars" in out and "50 bars" in out and "coarse timeframe 1d: 2 closed bars" in out
    shown = [int(m.group(1)) for m in re.finditer(r"^\s*(\d+)\s+2021-", out, re.M)]
    assert shown == [1, 2, 49, 50]  # the first two and the last two bars, numbered like data rows
    with pytest.raises(DataError, match="data row 3 .*close"):
        _run_data_command("data", "show", str(_write_csv(tmp_path, _corrupt(_frame(), 3, "Close", -2.0))))
    with pytest.raises(DataError, match=r"^data show: 'typo' is neither a bundled dataset"):  # not data.dataset:
        _run_data_command("data", "show", "typo")


@pytest.mark.slow  # imports every bundled dataset's package
def test_data_list_shows_every_bundled_dataset(capsys):
    assert _run_data_command("data", "list") == 0
    out = capsys.readouterr().out
    for name in ("eurusd_1h", "goog_1d", "sp500_1d", "nasdaq_1d"):
        assert name in out


def test_data_show_prints_weekly_bars_without_a_coarse_view_unless_one_is_given(tmp_path, capsys):
    frame = _frame(30)
    frame["Timestamp"] = pd.date_range("2021-03-01", periods=30, freq="W-MON").strftime("%Y-%m-%d")
    path = _write_csv(tmp_path, frame)
    assert _run_data_command("data", "show", str(path)) == 0
    out = capsys.readouterr().out
    assert "1w bars" in out and "30 bars" in out
    assert "coarse timeframe: none by default for 1w bars; pass --coarse-rule" in out
    assert _run_data_command("data", "show", str(path), "--coarse-rule", "4w") == 0
    assert re.search(r"coarse timeframe 4w: [1-9]\d* closed bars", capsys.readouterr().out)
    with pytest.raises(ConfigurationError, match="data.coarse_rule: '1d' is not longer than the fine bars"):
        _run_data_command("data", "show", str(path), "--coarse-rule", "1d")


def test_bars_less_than_half_the_files_bar_length_apart_are_refused_naming_the_row(tmp_path):
    frame = _frame(40)
    stamps = pd.to_datetime(frame["Timestamp"])
    stamps.iloc[30:] = stamps.iloc[29] + pd.to_timedelta(5 * np.arange(1, 11), "min")  # 5-minute bars after 30 hourly
    frame["Timestamp"] = stamps.dt.strftime("%Y-%m-%d %H:%M:%S")
    with pytest.raises(DataError, match=r"data row 31 .*: timestamp: .* 5m after the previous row, less than half "
                                        r"the file's bar length 1h"):
        load_ohlcv(_write_csv(tmp_path, frame))
    frame = _frame(40)  # a session's first bar half a bar long (09:30, then 10:00 on): one timeframe still
    stamps = pd.to_datetime(frame["Timestamp"])
    stamps.iloc[1:] = stamps.iloc[1:] - pd.Timedelta("30min")
    frame["Timestamp"] = stamps.dt.strftime("%Y-%m-%d %H:%M:%S")
    assert load_ohlcv(_write_csv(tmp_path, frame)).timeframe == "1h"


def test_a_second_timeframe_as_common_as_a_third_of_the_spacings_is_warned_of(tmp_path, caplog):
    frame = _frame(40)
    stamps = pd.to_datetime(frame["Timestamp"])
    stamps.iloc[15:] = stamps.iloc[14] + pd.to_timedelta(5 * np.arange(1, 26), "min")  # 15 hourly, then 25 five-minute
    frame["Timestamp"] = stamps.dt.strftime("%Y-%m-%d %H:%M:%S")
    ds = load_ohlcv(_write_csv(tmp_path, frame))
    assert ds.timeframe == "5m"
    assert "of consecutive bars are 1h apart" in caplog.text and "two timeframes" in caplog.text
    caplog.clear()
    load_ohlcv(_write_csv(tmp_path, _frame(40)))  # one timeframe: nothing said
    assert "two timeframes" not in caplog.text
