import threading
import time

import numpy as np
import pytest

from dualhrq.config import PatternsConfig
from dualhrq.errors import ConfigurationError, DataError, ModelLoadError
from dualhrq.patterns.context import drop_patterns, pattern_context
from dualhrq.patterns.encoder import PatternEncoder
from dualhrq.patterns.library import PatternLibrary, exact_knn
from dualhrq.patterns.rwlock import ReadWriteLock

DIM = 8
CFG = PatternsConfig(m=8, ef_construction=64, ef=32, max_elements=20_000)


def make_library(n: int, cfg: PatternsConfig = CFG, seed: int = 0, **meta: object) -> tuple[PatternLibrary, np.ndarray]:
    """n entries whose window i ends at time 100*i and becomes known 50 ns later."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    lib = PatternLibrary(DIM, cfg, outcome_scale=0.01)
    t = np.arange(n, dtype=np.int64) * 100
    fields = dict(instrument="EURUSD", window_start=t - 90, window_end=t, available_at=t + 50,
                  outcome=rng.normal(size=n) * 0.01, regime=rng.integers(0, 4, size=n))
    fields.update(meta)
    if n:
        lib.add(x, **fields)
    return lib, x


@pytest.mark.parametrize("n", [1_000, 10_000])  # exact search over few eligible entries; over-fetch from the graph
def test_query_never_returns_entries_known_after_as_of(n):
    lib, x = make_library(n)
    as_of = 100 * int(n * 0.6)
    hits = lib.query(x[-50:], as_of=as_of, k=8)  # each query's exact twin is from the future
    assert (hits.count == 8).all()
    assert (hits.available_at[hits.valid] <= as_of).all()
    assert (hits.window_end == hits.available_at - 50).all() and (hits.instrument == "EURUSD").all()
    assert not np.isin(hits.ids, np.arange(n - 50, n)).any()
    eligible = np.flatnonzero(np.arange(n) * 100 + 50 <= as_of)
    idx, _ = exact_knn(x[-50:], x[eligible], 8, "l2")
    recall = np.mean([len(set(h) & set(eligible[i])) / 8 for h, i in zip(hits.ids, idx)])
    assert recall >= 0.9


def test_each_query_is_filtered_by_its_own_as_of():
    lib, x = make_library(200)
    as_of = np.array([100 * 10, 100 * 150])
    hits = lib.query(x[[190, 190]], as_of=as_of, k=3)
    assert (hits.available_at[0] <= as_of[0]).all() and hits.available_at[0].max() > 0
    assert (hits.available_at[1] <= as_of[1]).all()
    assert hits.ids[1, 0] != 190 and hits.ids[0, 0] != 190


def test_k_is_clamped_to_the_live_count():
    lib, x = make_library(3)
    hits = lib.query(x[:2], as_of=10**12, k=10)
    assert hits.ids.shape == (2, 3)
    assert (hits.count == 3).all()


@pytest.mark.parametrize("n, as_of", [(0, 10**12), (100, -1)], ids=["empty", "all-in-the-future"])
def test_empty_or_fully_filtered_index_means_no_patterns(n, as_of):
    lib, _ = make_library(n)
    hits = lib.query(np.zeros((2, DIM), np.float32), as_of=as_of, k=4)
    assert (hits.count == 0).all()
    ctx, mask = lib.context(hits, pattern_dim=16, k=4)
    assert ctx.shape == (2, 4, 16) and not ctx.any() and not mask.any()


def test_fewer_eligible_than_k_pads_the_rest():
    lib, x = make_library(100)
    hits = lib.query(x[:1], as_of=100 * 2 + 50, k=8)  # entries 0, 1, 2 are known
    assert hits.count.tolist() == [3]
    assert sorted(hits.ids[0, :3].tolist()) == [0, 1, 2] and (hits.ids[0, 3:] == -1).all()
    assert hits.instrument[0].tolist() == ["EURUSD"] * 3 + [""] * 5 and not hits.embedding[0, 3:].any()


def test_expired_entries_are_excluded_deleted_and_their_slots_reused():
    n = 100
    t = np.arange(n, dtype=np.int64) * 100
    lib, x = make_library(n, expires_at=np.where(np.arange(n) < 40, t + 1_000, 0))
    late = 10**9
    assert not np.isin(lib.query(x, as_of=late, k=5).ids, np.arange(40)).any()  # before expire() runs
    assert lib.expire(now=late) == 40
    assert len(lib) == 60 and lib.slots == n
    new = lib.add(x[:40], instrument="EURUSD", window_start=0, window_end=0, available_at=0, outcome=0.01, regime=0)
    assert len(lib) == 100 and lib.slots == n  # reused, not grown
    assert not np.isin(new, np.arange(n)).any()  # reused slots get fresh labels
    hits = lib.query(x[:40], as_of=late, k=1)
    assert (hits.ids[:, 0] == new).all()


def test_expiry_days_sets_expires_at_from_available_at():
    cfg = PatternsConfig(m=8, ef_construction=64, max_elements=100, expiry_days=1.0)
    lib, x = make_library(10, cfg)
    day = 86_400 * 10**9
    assert lib.expire(now=day) == 0
    assert lib.expire(now=day + 100 * 9 + 50) == 10


def test_quality_follows_realised_outcomes_and_entries_retire_below_the_floor():
    lib, x = make_library(10, outcome=np.where(np.arange(10) < 5, 0.01, -0.01), quality=0.5)
    ids = np.arange(10)
    before = lib.query(x[:1], as_of=10**9, k=10)
    assert lib.update_quality(ids, np.full(10, 0.02)) == 0  # up-moves: entries 0-4 were right
    after = lib.query(x[:1], as_of=10**9, k=10)
    q = dict(zip(after.ids[0], after.quality[0]))
    assert all(q[i] > 0.5 for i in range(5)) and all(q[i] < 0.5 for i in range(5, 10))
    assert before.quality.max() == pytest.approx(0.5)
    retired = sum(lib.update_quality(np.arange(5, 10), np.full(5, 0.02)) for _ in range(10))
    assert retired == 5 and len(lib) == 5
    assert set(lib.query(x, as_of=10**9, k=10).ids.ravel()) == {0, 1, 2, 3, 4}
    assert lib.update_quality(np.arange(5, 10), np.full(5, 0.02)) == 0  # stale ids are ignored


def test_save_load_round_trip_keeps_results_and_sets_ef(tmp_path):
    lib, x = make_library(500, PatternsConfig(m=8, ef_construction=64, ef=20, max_elements=1000))
    lib.expire(now=0)
    lib.update_quality(np.arange(5), np.full(5, -1.0))
    lib.save(tmp_path / "lib")
    loaded = PatternLibrary.load(tmp_path / "lib")
    assert loaded.ef == 20  # hnswlib forgets ef (it reloads as 10)
    assert PatternLibrary.load(tmp_path / "lib", PatternsConfig(ef=77)).ef == 77
    a, b = lib.query(x[:20], 10**9, 5), loaded.query(x[:20], 10**9, 5)
    assert (a.ids == b.ids).all() and np.allclose(a.quality, b.quality) and np.allclose(a.outcome, b.outcome)
    assert (a.instrument == b.instrument).all() and (a.window_start == b.window_start).all()
    assert len(loaded) == len(lib) and loaded.outcome_scale == lib.outcome_scale


def test_corrupted_or_unverified_library_is_refused(tmp_path):
    lib, _ = make_library(50)
    d = lib.save(tmp_path / "lib")
    raw = bytearray((d / "index.bin").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (d / "index.bin").write_bytes(bytes(raw))
    with pytest.raises(ModelLoadError, match="index.bin.*SHA-256"):
        PatternLibrary.load(d)
    (d / "SHA256SUMS").unlink()
    with pytest.raises(ModelLoadError, match="checksum file missing"):
        PatternLibrary.load(d)


def test_add_rejects_inconsistent_metadata_naming_the_field():
    lib, _ = make_library(0)
    with pytest.raises(DataError, match="available_at"):
        lib.add(np.zeros((2, DIM), np.float32), instrument="A", window_start=0, window_end=10,
                available_at=5, outcome=0.0, regime=0)
    with pytest.raises(DataError, match="embeddings"):
        lib.add(np.full((1, DIM), np.nan), instrument="A", window_start=0, window_end=0, available_at=0,
                outcome=0.0, regime=0)
    with pytest.raises(DataError, match="outcome"):
        lib.add(np.zeros((3, DIM)), instrument="A", window_start=0, window_end=0, available_at=0,
                outcome=[0.0, 1.0], regime=0)


def test_a_full_library_refuses_to_grow_with_a_config_error():
    lib, x = make_library(10, PatternsConfig(m=8, ef_construction=32, max_elements=10))
    with pytest.raises(ConfigurationError, match="patterns.max_elements"):
        lib.add(x[:1], instrument="A", window_start=0, window_end=0, available_at=0, outcome=0.0, regime=0)


def test_context_vector_layout():
    lib, x = make_library(20, outcome=np.linspace(-1, 1, 20), quality=0.75)
    hits = lib.query(x[:2], as_of=10**9, k=3)
    ctx, mask = lib.context(hits, pattern_dim=6, k=5)  # 3 embedding dims kept of 8
    assert ctx.dtype == np.float32 and ctx.shape == (2, 5, 6) and mask.tolist() == [[1, 1, 1, 0, 0]] * 2
    assert np.allclose(ctx[:, :3, :3], hits.embedding[:, :, :3])
    assert np.allclose(ctx[:, :3, 3], np.clip(hits.outcome / 0.01, -8, 8))
    assert np.allclose(ctx[:, :3, 4], 0.75)
    assert np.allclose(ctx[:, 0, 5], 1.0)  # each query is in the library: distance 0, similarity 1
    assert not ctx[:, 3:].any()
    wide, _ = lib.context(hits, pattern_dim=16, k=3)  # embedding zero-padded to P-3
    assert np.allclose(wide[:, :, :8], hits.embedding) and not wide[:, :, 8:13].any()


def test_queries_run_safely_while_entries_are_added():
    rng = np.random.default_rng(1)
    lib, x = make_library(500)
    errors: list[BaseException] = []
    stop = threading.Event()
    queried = 0

    def reader() -> None:
        nonlocal queried
        while not stop.is_set():
            try:
                hits = lib.query(rng.normal(size=(4, DIM)).astype(np.float32), as_of=100 * 400, k=5)
                assert (hits.count == 5).all() and (hits.available_at[hits.valid] <= 100 * 400).all()
                queried += 1
            except BaseException as e:  # noqa: BLE001 - reported by the main thread
                errors.append(e)
                return

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for th in threads:
        th.start()
    added = []
    for i in range(20):
        batch = rng.normal(size=(100, DIM)).astype(np.float32)
        t = 10**6 + i
        added.append((batch, lib.add(batch, instrument="B", window_start=t, window_end=t, available_at=t,
                                     outcome=0.0, regime=1)))
    stop.set()
    for th in threads:
        th.join()
    assert not errors, errors[0]
    assert queried > 0 and len(lib) == 2500
    for batch, labels in added:
        assert (lib.query(batch, as_of=10**9, k=1).ids[:, 0] == labels).mean() >= 0.95


def test_write_lock_excludes_readers_and_a_waiting_writer_blocks_new_readers():
    lock = ReadWriteLock()
    events: list[str] = []
    writing, finish_write = threading.Event(), threading.Event()

    def writer() -> None:
        with lock.write():
            events.append("write")
            writing.set()
            finish_write.wait(2)

    def late_reader() -> None:
        with lock.read():
            events.append("read")

    w, r = threading.Thread(target=writer), threading.Thread(target=late_reader)
    with lock.read():
        w.start()
        time.sleep(0.05)
        assert events == []  # the writer waits for the reader to leave
        r.start()
        time.sleep(0.05)
        assert events == []  # a new reader queues behind the waiting writer instead of starving it
    assert writing.wait(2)
    assert events == ["write"]  # the queued reader stays out while the writer holds the lock
    finish_write.set()
    w.join(2)
    r.join(2)
    assert events == ["write", "read"]


def test_training_context_excludes_each_samples_own_outcome_and_dropout_blanks_whole_rows():
    features = np.random.default_rng(2).normal(size=(300, 12))
    encoder = PatternEncoder(DIM).fit(features)
    lib = PatternLibrary(DIM, CFG, outcome_scale=0.01)
    t = np.arange(300, dtype=np.int64) * 100
    lib.add(encoder.encode(features), instrument="X", window_start=t, window_end=t, available_at=t + 100,
            outcome=0.01, regime=0)
    ctx, mask = pattern_context(lib, encoder, features, as_of=t, pattern_dim=12, k=4)  # each sample at its time
    assert mask[0].sum() == 0 and (mask[5:].sum(axis=1) == 4).all()  # sample i sees entries 0..i-1 only
    hits = lib.query(encoder.encode(features[5:]), as_of=t[5:], k=4)
    assert (hits.ids < np.arange(5, 300)[:, None]).all()
    dropped_ctx, dropped_mask = drop_patterns(ctx, mask, rate=0.5, rng=np.random.default_rng(0))
    blank = dropped_mask.sum(axis=1) == 0
    assert 0.3 < blank[5:].mean() < 0.7
    assert not dropped_ctx[blank].any() and np.array_equal(dropped_ctx[~blank], ctx[~blank])


@pytest.mark.parametrize("space", ["l2", "cosine", "ip"])
def test_the_serving_lookup_gives_the_context_of_the_full_query(space):
    """`pattern_context` copies only what the context holds; it must equal `context(query(...))`, padding and
    per-query times included (a padded hit's distance is inf: its similarity must read 0, not NaN)."""
    lib, x = make_library(600, PatternsConfig(m=8, ef_construction=64, ef=32, max_elements=2_000, space=space))
    q = np.random.default_rng(1).normal(size=(5, DIM)).astype(np.float32)
    for as_of in (60_000, 160, np.array([160, 400, 60_000, 251, 10]), np.int64(60_000)):
        ctx, mask = lib.pattern_context(q, as_of, pattern_dim=12, k=6)
        want_ctx, want_mask = lib.context(lib.query(q, as_of, 6), pattern_dim=12, k=6)
        np.testing.assert_array_equal(mask, want_mask)
        np.testing.assert_array_equal(ctx.view(np.uint32), want_ctx.view(np.uint32))  # bit for bit: no -0.0
        assert np.isfinite(ctx).all()
    assert lib.pattern_context(q, 10, 12, 6)[1].sum() == 0  # nothing known yet: the regime-only path


@pytest.mark.parametrize("space", ["l2", "cosine", "ip"])
def test_the_one_pass_scan_of_a_bounded_library_matches_the_full_query_at_any_time_after_deletions_and_with_fewer_than_k(
        space):
    """Queries at one time take one compiled pass (time filter, scan, gather, context); it must give what
    `context(query(...))` gives when deleted rows sit among the live ones, when some entries are not known yet
    or have expired by then, and when fewer than k are known."""
    cfg = PatternsConfig(m=8, ef_construction=64, ef=32, max_elements=2_000, space=space)
    t = np.arange(600, dtype=np.int64) * 100
    expiring = np.where(t % 300 == 0, t + 60, 0)
    lib, _ = make_library(600, cfg, expires_at=expiring)
    assert lib.expire(10**9) == 200 and lib.bounded
    unexpired, _ = make_library(600, cfg, expires_at=expiring)  # expiries still ahead: the scan filters them
    tiny, _ = make_library(4, cfg, seed=2)
    q = np.random.default_rng(1).normal(size=(5, DIM)).astype(np.float32)
    for library, as_of in ((lib, 10**9), (tiny, 10**9), (lib, 30_170), (unexpired, 30_170), (unexpired, 30_000),
                           (unexpired, 449), (unexpired, 0)):
        ctx, mask = library.pattern_context(q, as_of, pattern_dim=12, k=6)
        want_ctx, want_mask = library.context(library.query(q, as_of, 6), pattern_dim=12, k=6)
        np.testing.assert_array_equal(mask, want_mask)
        np.testing.assert_array_equal(ctx.view(np.uint32), want_ctx.view(np.uint32))
    assert tiny.pattern_context(q, 10**9, pattern_dim=12, k=6)[1].sum(axis=1).tolist() == [4] * 5
    # at 449: entries 0..3 are known (t + 50 <= 449), and entries 0 and 3 expired (at 60 and 360)
    assert unexpired.pattern_context(q, 449, pattern_dim=12, k=6)[1].sum(axis=1).tolist() == [2] * 5


@pytest.mark.parametrize("space", ["l2", "cosine", "ip"])
def test_exact_search_finds_the_k_nearest_as_a_full_sort_does_and_keeps_the_earlier_of_equals(space):
    rng = np.random.default_rng(3)
    v = rng.normal(size=(500, DIM)).astype(np.float32)
    v[100] = v[7]  # a tie: the lower row comes first
    q = np.concatenate([v[7:8], rng.normal(size=(20, DIM)).astype(np.float32)])
    qq, vv = q.astype(np.float64), v.astype(np.float64)
    if space == "cosine":
        qq = qq / np.linalg.norm(qq, axis=1, keepdims=True)
        vv = vv / np.linalg.norm(vv, axis=1, keepdims=True)
    full = ((qq[:, None] - vv[None]) ** 2).sum(-1) if space == "l2" else 1.0 - qq @ vv.T
    want = np.argsort(full, axis=1, kind="stable")[:, :6]
    rows, dist = exact_knn(q, v, 6, space)
    np.testing.assert_array_equal(rows, want)
    np.testing.assert_allclose(dist, np.take_along_axis(full, want, 1), rtol=0, atol=1e-12)
    some = np.arange(0, 500, 3)  # a subset of the rows: the rows come back, not positions in the subset
    rows, _ = exact_knn(q, v, 4, space, some)
    np.testing.assert_array_equal(rows, some[np.argsort(full[:, some], axis=1, kind="stable")[:, :4]])
    assert exact_knn(q, v, 4, space, some[:2])[0].shape == (len(q), 2)
    with pytest.raises(DataError, match="rows: must be in 0..499"):  # the compiled scan reads unchecked
        exact_knn(q, v, 4, space, np.array([3, 500]))
    with pytest.raises(DataError, match="queries"):
        exact_knn(q[:, :3], v, 4, space)


def test_a_library_within_the_exact_bound_answers_serving_lookups_without_the_graph(monkeypatch):
    lib, x = make_library(600)
    assert lib.bounded and not make_library(5000)[0].bounded
    monkeypatch.setattr(lib, "_index", None)  # any graph search would raise
    ctx, mask = lib.pattern_context(x[:3], 10**9, pattern_dim=12, k=4)
    assert mask.all() and np.array_equal(ctx[:, 0, -1], [1.0, 1.0, 1.0])  # each query's twin, similarity 1
    # A time filter (3 entries known) is the same one compiled pass, not the general search's numpy steps.
    monkeypatch.setattr(lib, "_nearest", None)
    _, mask = lib.pattern_context(x[:3], 100 * 2 + 50, pattern_dim=12, k=4)
    assert mask.sum(axis=1).tolist() == [3, 3, 3]


def test_try_pattern_context_gives_way_to_a_library_update_at_once():
    lib, x = make_library(100)
    assert lib.try_pattern_context(x[:1], 10**9, 12, 4) is not None
    writing, done = threading.Event(), threading.Event()

    def update() -> None:
        with lib._lock.write():
            writing.set()
            done.wait(5)

    t = threading.Thread(target=update)
    t.start()
    writing.wait(5)
    t0 = time.monotonic()
    assert lib.try_pattern_context(x[:1], 10**9, 12, 4) is None
    assert time.monotonic() - t0 < 0.05
    done.set()
    t.join()
    assert lib.try_pattern_context(x[:1], 10**9, 12, 4) is not None
