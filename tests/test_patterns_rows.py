import json

import numpy as np
import pytest

from dualhrq.config import PatternsConfig
from dualhrq.errors import ConfigurationError, ModelLoadError
from dualhrq.patterns.checksums import write_checksums
from dualhrq.patterns.library import PatternLibrary
from dualhrq.patterns.rows import PatternRows

DIM = 3

# What format 2 writes, as the code before PatternRows wrote it: a library saved by any version reading
# format 2 must keep these files, keys (in this order), dtypes and per-row shapes.
FORMAT_2_FILES = ["SHA256SUMS", "index.bin", "library.json", "meta.npz"]
FORMAT_2_META = [("label", "int64", ()), ("alive", "bool", ()), ("embedding", "float32", (DIM,)),
                 ("instrument", "int32", ()), ("window_start", "int64", ()), ("window_end", "int64", ()),
                 ("available_at", "int64", ()), ("expires_at", "int64", ()), ("outcome", "float32", ()),
                 ("regime", "int32", ()), ("quality", "float32", ())]
FORMAT_2_INFO = ["config", "dim", "format", "instruments", "live", "outcome_scale", "size"]


def append(rows: PatternRows, n: int, start: int, instrument: str = "EURUSD") -> np.ndarray:
    """n entries with every field a function of its position start + i."""
    v = np.arange(start, start + n)
    return rows.append([instrument] * n, embedding=np.repeat(v[:, None], DIM, 1).astype(np.float32),
                       window_start=v, window_end=v + 1, available_at=v + 2, expires_at=np.zeros(n, np.int64),
                       outcome=v / 100, regime=v % 4, quality=np.full(n, 0.5))


def test_append_grows_deletes_reuses_and_gathers():
    rows = PatternRows(DIM, limit=10)
    for start, n in ((0, 1), (1, 2), (3, 4)):  # each batch past the capacity so far
        assert append(rows, n, start).tolist() == list(range(start, start + n))
    assert rows.size == rows.live == 7 and rows["label"].tolist() == list(range(7))

    rows.delete(np.array([1, 4]))
    assert rows.size == 7 and rows.live == 5 and not rows["alive"][[1, 4]].any()
    reused = append(rows, 3, 100, instrument="GOOG")
    assert reused.tolist() == [1, 4, 7]  # deleted rows first, then a new one
    assert rows["label"][reused].tolist() == [11, 14, 7]  # a reused row gets a fresh label

    g = rows.gather(np.array([[4, 0], [7, -1]]))
    assert g["label"].tolist() == [[14, 0], [7, -1]]
    assert g["instrument"].tolist() == [["GOOG", "EURUSD"], ["GOOG", ""]]
    assert g["window_start"].tolist() == [[101, 0], [102, 0]] and g["available_at"][1, 1] == 0
    assert g["embedding"][0, 0].tolist() == [101.0] * DIM and not g["embedding"][1, 1].any()
    assert g["outcome"].dtype == np.float32 and g["embedding"].shape == (2, 2, DIM)
    g["quality"][:] = 1.0
    assert (rows["quality"] == 0.5).all()  # gather copies
    some = rows.gather(np.array([-1, 0]), ["label", "quality"])
    assert list(some) == ["label", "quality"] and some["label"].tolist() == [-1, 0]


def test_find_knows_only_current_labels_of_live_rows():
    rows = PatternRows(DIM, limit=10)
    append(rows, 5, 0)
    rows.delete(np.array([2, 3]))
    append(rows, 1, 50)  # row 2 again, as label 12
    assert rows.find(np.array([0, 2, 12, 3, 13, 9, -1])).tolist() == [0, -1, 2, -1, -1, -1, -1]
    assert rows.row_of(np.array([12, 7], np.uint64)).tolist() == [2, 7]


def test_append_beyond_the_limit_is_refused_before_anything_changes():
    rows = PatternRows(DIM, limit=4)
    append(rows, 3, 0)
    with pytest.raises(ConfigurationError, match="patterns.max_elements.*3 live of 4.*cannot add 2"):
        append(rows, 2, 10)
    assert rows.size == rows.live == 3
    rows.delete(np.array([0]))
    assert append(rows, 2, 10).tolist() == [0, 3]  # a freed row makes room


def test_append_needs_every_field():
    rows = PatternRows(DIM, limit=4)
    with pytest.raises(TypeError, match="quality"):
        rows.append(["A"], embedding=np.zeros((1, DIM)), window_start=0, window_end=0, available_at=0,
                    expires_at=0, outcome=0.0, regime=0)


def test_save_load_round_trip_keeps_rows_free_list_and_instruments(tmp_path):
    rows = PatternRows(DIM, limit=10)
    append(rows, 4, 0)
    append(rows, 2, 10, instrument="GOOG")
    rows.delete(np.array([1]))
    rows.save(tmp_path / "meta.npz")
    loaded = PatternRows.load(tmp_path / "meta.npz", dim=DIM, size=rows.size, limit=10, instruments=rows.instruments)
    every = np.arange(rows.size)
    for name, values in rows.gather(every).items():
        got = loaded.gather(every)[name]
        assert got.dtype == values.dtype and np.array_equal(got, values), name
    assert loaded.live == 5 and loaded.instruments == ["EURUSD", "GOOG"]
    assert append(loaded, 2, 20, instrument="SP500").tolist() == [1, 6]  # the freed row, then growth
    assert loaded.gather(np.array([1, 6]))["instrument"].tolist() == ["SP500", "SP500"]
    assert loaded["label"][[1, 6]].tolist() == [11, 6]


def test_library_files_keep_format_2(tmp_path):
    cfg = PatternsConfig(m=8, ef_construction=32, max_elements=100)
    lib = PatternLibrary(DIM, cfg)
    lib.add(np.zeros((7, DIM), np.float32), instrument="A", window_start=0, window_end=1, available_at=2,
            outcome=0.0, regime=0)
    d = lib.save(tmp_path / "lib")
    assert sorted(p.name for p in d.iterdir()) == FORMAT_2_FILES
    with np.load(d / "meta.npz") as meta:
        assert [(k, str(meta[k].dtype), meta[k].shape[1:]) for k in meta.files] == FORMAT_2_META
        assert {meta[k].shape[0] for k in meta.files} == {7}
    info = json.loads((d / "library.json").read_text())
    assert sorted(info) == FORMAT_2_INFO and info["format"] == 2


def damage(path, name: str, value: np.ndarray | None) -> None:
    """Rewrite meta.npz with field ``name`` replaced (None: dropped), and re-sign it so only the content is wrong."""
    with np.load(path / "meta.npz") as meta:
        arrays = {k: meta[k] for k in meta.files}
    if value is None:
        del arrays[name]
    else:
        arrays[name] = value
    np.savez(path / "meta.npz", **arrays)
    write_checksums(path, ["index.bin", "meta.npz", "library.json"])


@pytest.mark.parametrize("name, value, message", [
    ("quality", None, "field 'quality' missing"),
    ("outcome", np.zeros(5, np.float64), "field 'outcome' is float64 \\[5\\], expected float32 \\[5\\]"),
    ("embedding", np.zeros((5, DIM - 1), np.float32),
     "field 'embedding' is float32 \\[5, 2\\], expected float32 \\[5, 3\\]"),
    ("window_end", np.zeros(4, np.int64), "field 'window_end' is int64 \\[4\\], expected int64 \\[5\\]"),
    ("instrument", np.full(5, 2, np.int32), "field 'instrument' has codes 2..2, but 1 instruments are named"),
], ids=["missing", "dtype", "shape", "rows", "codes"])
def test_damaged_meta_is_refused_naming_the_field(tmp_path, name, value, message):
    lib = PatternLibrary(DIM, PatternsConfig(m=8, ef_construction=32, max_elements=100))
    lib.add(np.random.default_rng(0).normal(size=(5, DIM)), instrument="A", window_start=0, window_end=1,
            available_at=2, outcome=0.0, regime=0)
    d = lib.save(tmp_path / "lib")
    damage(d, name, value)
    with pytest.raises(ModelLoadError, match=f"meta.npz: {message}"):
        PatternLibrary.load(d)


def test_unreadable_meta_is_refused(tmp_path):
    lib = PatternLibrary(DIM, PatternsConfig(m=8, ef_construction=32, max_elements=100))
    d = lib.save(tmp_path / "lib")
    (d / "meta.npz").write_bytes(b"not a zip file")
    write_checksums(d, ["index.bin", "meta.npz", "library.json"])
    with pytest.raises(ModelLoadError, match="meta.npz: unreadable"):
        PatternLibrary.load(d)
