import asyncio
import subprocess
import sys
import threading
import time

import msgspec
import numpy as np
import pytest

from dualhrq.config import FaultConfig, PatternsConfig
from dualhrq.patterns.encoder import PatternEncoder
from dualhrq.patterns.library import PatternLibrary
from dualhrq.patterns.retriever import Retriever

F, E, P, K = 12, 4, 8, 3
EPSILON_S = 0.05  # scheduling slack on a shared, noisy machine
CFG = PatternsConfig(m=8, ef_construction=32, ef=16, max_elements=1000, embed_dim=E, timeout_ms=500.0, pool_size=2)


@pytest.fixture(scope="module")
def features() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(300, F))


def make_retriever(features: np.ndarray, cfg: PatternsConfig = CFG, n: int = 200) -> Retriever:
    encoder = PatternEncoder(E).fit(features)
    library = PatternLibrary(E, cfg, outcome_scale=0.01)
    if n:
        t = np.arange(n, dtype=np.int64) * 100
        library.add(encoder.encode(features[:n]), instrument="X", window_start=t, window_end=t, available_at=t,
                    outcome=0.01, regime=0)
    return Retriever(library, encoder, cfg, pattern_dim=P, k=K)


def assert_fail_open(result, reason: str, batch: int) -> None:
    assert result.reason == reason and result.fail_open
    assert result.pattern_context.shape == (batch, K, P) and result.mask.shape == (batch, K)
    assert not result.pattern_context.any() and not result.mask.any() and not result.used.any()


def test_healthy_index_returns_pattern_context(features):
    r = make_retriever(features)
    result = r.retrieve(features[250:253], as_of=10**9)
    assert result.reason is None and not result.fail_open
    assert result.mask.tolist() == [[1.0] * K] * 3 and result.used.tolist() == [K] * 3
    assert result.pattern_context.dtype == np.float32 and result.pattern_context.any()
    r.close()


def test_disabled_fails_open_without_querying(features):
    r = make_retriever(features, n=200)
    r.set_fault(delay_ms=2000, error_rate=0)  # would time out if it queried
    r.enabled = False
    t0 = time.monotonic()
    assert_fail_open(r.retrieve(features[:2], as_of=10**9, timeout_s=1.0), "disabled", 2)
    assert time.monotonic() - t0 < EPSILON_S
    r.enabled = True
    r.set_fault(0, 0)
    r.close()


@pytest.mark.parametrize("n, as_of", [(0, 10**9), (200, -1)], ids=["empty-library", "nothing-known-yet"])
def test_no_eligible_patterns_fails_open_as_empty(features, n, as_of):
    r = make_retriever(features, n=n)
    assert_fail_open(r.retrieve(features[:2], as_of=as_of), "empty", 2)
    r.close()


def test_fault_drill_error_rate_fails_open_as_error(features):
    r = make_retriever(features, msgspec.structs.replace(CFG, fault=FaultConfig(error_rate=1.0)))
    assert_fail_open(r.retrieve(features[:2], as_of=10**9), "error", 2)
    r.set_fault(delay_ms=0, error_rate=0)  # switched off at runtime
    assert r.retrieve(features[:2], as_of=10**9).reason is None
    r.close()


def test_a_failing_encoder_fails_open_as_error(features):
    r = make_retriever(features)
    bad = features[:2].copy()
    bad[0, 0] = np.nan
    assert_fail_open(r.retrieve(bad, as_of=10**9), "error", 2)
    r.close()


def test_deadline_holds_when_the_index_sleeps_one_second(features):
    r = make_retriever(features, msgspec.structs.replace(CFG, fault=FaultConfig(delay_ms=1000)))
    timeout = 0.05
    t0 = time.monotonic()
    result = r.retrieve(features[:2], as_of=10**9, timeout_s=timeout)
    assert time.monotonic() - t0 < timeout + EPSILON_S
    assert_fail_open(result, "timeout", 2)
    r.close()


def test_stuck_pool_fails_open_as_busy_at_once_then_recovers(features):
    r = make_retriever(features)  # pool_size 2
    r.set_fault(delay_ms=300, error_rate=0)
    for _ in range(2):  # each overrunning query keeps its worker
        assert r.retrieve(features[:1], as_of=10**9, timeout_s=0.02).reason == "timeout"
    t0 = time.monotonic()
    result = r.retrieve(features[:1], as_of=10**9, timeout_s=1.0)
    assert time.monotonic() - t0 < EPSILON_S  # not queued behind the stuck workers
    assert_fail_open(result, "busy", 1)
    r.set_fault(0, 0)
    time.sleep(0.4)  # the stuck queries finish and hand their workers back
    assert r.retrieve(features[:1], as_of=10**9).reason is None
    r.close()


def test_an_awaited_lookup_keeps_the_deadline_without_blocking_the_loop(features):
    r = make_retriever(features)
    r.set_fault(delay_ms=1000, error_rate=0)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    async def main() -> tuple[object, float]:
        task = asyncio.create_task(ticker())
        t0 = time.monotonic()
        result = await r.begin(features[:1], as_of=10**9).result_async(timeout_s=0.1)
        elapsed = time.monotonic() - t0
        task.cancel()
        return result, elapsed

    result, elapsed = asyncio.run(main())
    assert elapsed < 0.1 + EPSILON_S
    assert_fail_open(result, "timeout", 1)
    assert ticks >= 3  # the loop kept running while retrieval waited
    r.set_fault(0, 0)
    healthy = asyncio.run(r.begin(features[:1], as_of=10**9).result_async())  # the second worker is free
    assert healthy.reason is None
    r.close()



def test_a_lookup_begun_early_searches_while_the_caller_works_and_its_wait_counts_from_collection(features):
    """`begin` gives the index a head start: a search slower than the timeout still serves a caller that
    worked longer than the search; a caller that collects too early waits only the timeout, then fails open."""
    r = make_retriever(features, msgspec.structs.replace(CFG, fault=FaultConfig(delay_ms=100)))
    lookup = r.begin(features[:1], as_of=10**9)
    time.sleep(0.1 + EPSILON_S)  # the caller's own work (the runtime builds the tokens here)
    t0 = time.monotonic()
    assert lookup.result(timeout_s=0.01).reason is None
    assert time.monotonic() - t0 < 0.01 + EPSILON_S

    async def collect_early() -> tuple[object, float]:
        pending = r.begin(features[:1], as_of=10**9)
        t0 = time.monotonic()
        found = await pending.result_async(timeout_s=0.02)
        return found, time.monotonic() - t0

    early, waited = asyncio.run(collect_early())
    assert_fail_open(early, "timeout", 1)
    assert waited < 0.02 + EPSILON_S
    r.close()


def test_a_query_stuck_for_good_does_not_keep_the_process_from_exiting():
    script = """
import numpy as np
from dualhrq.config import PatternsConfig
from dualhrq.patterns.encoder import PatternEncoder
from dualhrq.patterns.library import PatternLibrary
from dualhrq.patterns.retriever import Retriever
x = np.random.default_rng(0).normal(size=(50, 6))
enc = PatternEncoder(4).fit(x)
cfg = PatternsConfig(embed_dim=4, max_elements=100)
lib = PatternLibrary(4, cfg)
lib.add(enc.encode(x), instrument="A", window_start=0, window_end=0, available_at=0, outcome=0.0, regime=0)
r = Retriever(lib, enc, cfg, pattern_dim=8, k=2)
r.set_fault(delay_ms=600_000, error_rate=0)
print(r.retrieve(x[:1], as_of=1, timeout_s=0.01).reason)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "timeout"


def test_after_timeouts_in_a_row_lookups_fail_open_at_once_until_a_pause_has_passed(features):
    r = make_retriever(features, msgspec.structs.replace(CFG, pool_size=4, fault=FaultConfig(delay_ms=200)))
    r.TRIP_PAUSE_S = 0.3
    for _ in range(r.TRIP_AFTER):
        assert_fail_open(r.retrieve(features[:1], as_of=10**9, timeout_s=0.01), "timeout", 1)
    t0 = time.monotonic()
    assert_fail_open(r.retrieve(features[:1], as_of=10**9, timeout_s=0.01), "tripped", 1)
    assert time.monotonic() - t0 < 0.01  # no wait at all while tripped
    r.set_fault(delay_ms=0, error_rate=0)  # the index recovers
    time.sleep(r.TRIP_PAUSE_S + 0.25)  # the pause, and the abandoned 200 ms queries, are over
    assert r.retrieve(features[:1], as_of=10**9, timeout_s=1.0).reason is None
    r.set_fault(delay_ms=200, error_rate=0)
    assert_fail_open(r.retrieve(features[:1], as_of=10**9, timeout_s=0.01), "timeout", 1)  # a success reset it
    assert_fail_open(r.retrieve(features[:1], as_of=10**9, timeout_s=0.01), "timeout", 1)
    r.close()


def test_a_lookup_of_fixed_cost_is_answered_on_the_callers_thread(features, monkeypatch):
    r = make_retriever(features)
    want = r.retrieve(features[250:251], as_of=10**9)
    monkeypatch.setattr(r._pool, "submit", lambda *a: pytest.fail("a bounded lookup went to a worker"))
    lookup = r.begin(features[250:251], as_of=10**9)
    found = lookup.result(timeout_s=1e-9)  # already answered: no wait at all
    assert found.reason is None
    np.testing.assert_array_equal(found.pattern_context, want.pattern_context)
    r.close()


def test_lookups_that_could_be_slow_go_to_a_worker_and_keep_their_deadline(features, monkeypatch):
    """A library update holding the index, a library beyond the exact bound, or a fault drill (an index whose
    time cannot be bounded): a worker searches, and the caller waits at most the timeout."""
    import dualhrq.patterns.library as library_module

    r = make_retriever(features)
    submitted = []
    submit = r._pool.submit
    monkeypatch.setattr(r._pool, "submit", lambda *a: submitted.append(1) or submit(*a))
    with r.library._lock.read():  # a writer waiting behind this reader blocks new readers
        writer = threading.Thread(target=lambda: r.library.expire(now=0))
        writer.start()
        time.sleep(0.05)
        t0 = time.monotonic()
        assert_fail_open(r.retrieve(features[:1], as_of=10**9, timeout_s=0.05), "timeout", 1)
        # Searched here instead, the lookup would wait forever (behind the writer, behind this thread's read
        # lock): a bound well above the slack of a loaded machine still tells the two apart.
        assert time.monotonic() - t0 < 0.05 + 10 * EPSILON_S
    writer.join()
    assert submitted == [1]
    bound = library_module.EXACT_MAX
    monkeypatch.setattr(library_module, "EXACT_MAX", 10)
    assert r.retrieve(features[:1], as_of=10**9).reason is None and submitted == [1, 1]
    monkeypatch.setattr(library_module, "EXACT_MAX", bound)
    r.set_fault(delay_ms=1, error_rate=0)
    assert r.retrieve(features[:1], as_of=10**9).reason is None and len(submitted) == 3
    r.close()
