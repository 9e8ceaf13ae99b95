"""The load generator against a scripted ROUTER on loopback: one reply per request, honest open-loop timing."""

import gc
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq

from dualhrq.bench.loadgen import run_load
from dualhrq.bench.report import format_summary, percentiles_ms, summarize
from dualhrq.errors import ConfigurationError


def fake_server(address_holder, stop, stall_at=None, stall_s=0.0, error_every=0):
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    address_holder.append(f"tcp://127.0.0.1:{port}")
    seen = 0
    while not stop.is_set():
        if not sock.poll(20):
            continue
        frames = sock.recv_multipart()
        req = msgpack.unpackb(frames[-1], raw=False)
        seen += 1
        if stall_at is not None and seen == stall_at:
            time.sleep(stall_s)
        if error_every and seen % error_every == 0:
            rep = {"type": "error", "id": req["id"], "code": "invalid_input", "message": "x", "field": "fine"}
        else:
            rep = {"type": "signal", "id": req["id"], "patterns": {"fail_open": seen % 2 == 0, "reason": "timeout"},
                   "timing_us": {"engine": 100.0, "total": 150.0}}
        sock.send_multipart(frames[:-1] + [msgpack.packb(rep)])
    sock.close(0)


@pytest.fixture()
def server(request):
    kwargs = getattr(request, "param", {})
    addr, stop = [], threading.Event()
    th = threading.Thread(target=fake_server, args=(addr, stop), kwargs=kwargs, daemon=True)
    th.start()
    while not addr:
        time.sleep(0.01)
    yield addr[0]
    stop.set()
    th.join(2)


def req(i, rid):
    return {"type": "signal", "id": rid}


def test_closed_loop_gets_one_sample_per_request(server):
    run = run_load(server, req, 200, concurrency=8)
    s = summarize(run)
    assert s["requests"] == 200 and s["replies_by_kind"] == {"signal": 200}
    assert s["fail_open_rate"] == pytest.approx(0.5, abs=0.01)
    assert s["server_stage_mean_us"]["engine"] == 100.0 == s["server_stage_p95_us"]["engine"]
    assert s["engine_ms"]["p95"] == pytest.approx(0.1)
    # what the runtime adds: each request's latency less the engine's 0.1 ms
    assert s["overhead_ms"]["p50"] == pytest.approx(s["latency_ms"]["p50"] - 0.1, abs=0.05)
    assert "end-to-end p95 minus engine p95" in format_summary("x", s)


def test_the_cyclic_collector_is_off_while_requests_are_timed_and_on_again_after(server):
    """A full collection of the bench's own heap would be charged to the server (seen: a 0.15 s max)."""
    during = []
    run_load(server, req, 50, concurrency=2, progress=lambda n: during.append(gc.isenabled()))
    assert len(during) == 50 and not any(during) and gc.isenabled()


@pytest.mark.parametrize("server", [{"error_every": 5}], indirect=True)
def test_errors_are_counted_by_code(server):
    s = summarize(run_load(server, req, 100, concurrency=4))
    assert s["replies_by_kind"] == {"signal": 80, "invalid_input": 20}


@pytest.mark.parametrize("server", [{"stall_at": 10, "stall_s": 0.3}], indirect=True)
def test_open_loop_charges_a_stall_to_every_request_due_during_it(server):
    # 200 req/s for 1 s with a 300 ms stall: ~60 requests were due during the stall, and each must carry
    # (part of) it. Measured from the actual send time, only the one stalled request would look slow.
    run = run_load(server, req, 200, rate=200.0)
    lat = np.array([s.latency_ms for s in run.samples])
    assert len(lat) == 200
    assert (lat > 100).sum() >= 30


def test_unanswered_requests_count_as_timeouts():
    ctx = zmq.Context.instance()
    sink = ctx.socket(zmq.ROUTER)  # receives, never answers
    port = sink.bind_to_random_port("tcp://127.0.0.1")
    try:
        s = summarize(run_load(f"tcp://127.0.0.1:{port}", req, 5, concurrency=5, timeout_s=0.2))
    finally:
        sink.close(0)
    assert s["replies_by_kind"] == {"timeout": 5}


def test_rate_and_concurrency_are_exclusive():
    with pytest.raises(ConfigurationError, match="exactly one"):
        run_load("tcp://127.0.0.1:1", req, 1, rate=1.0, concurrency=1)


def test_percentiles_of_known_values():
    p = percentiles_ms(np.arange(1, 101, dtype=float))
    assert p["p50"] == pytest.approx(50.5) and p["max"] == 100 and p["p99"] == pytest.approx(99.01)


def test_the_transport_floor_echo_answers_every_request_and_reports_its_pass_as_the_engine(tmp_path):
    from dualhrq.bench.report import format_floor
    from dualhrq.bench.server_process import EchoProcess

    with EchoProcess(pass_bytes=4 << 20, log_path=tmp_path / "echo.log") as echo:
        s = summarize(run_load(echo.address, req, 30, concurrency=1))
    assert s["replies_by_kind"] == {"signal": 30}  # every reply found its request by id
    assert s["engine_ms"]["p50"] > 0 and s["overhead_ms"]["p50"] > 0
    server = {**s, "latency_ms": {**s["latency_ms"], "p95": s["latency_ms"]["p95"] + 1.0}}
    warm = {**s, "latency_ms": {**s["latency_ms"], "p95": 0.25}}
    line = format_floor(server, s, warm)
    assert "1.000 ms above the floor" in line
    assert line.endswith("the bare round trip (no pass, warm caches): p95 0.250 ms")


def test_the_floor_phase_needs_a_bundle_to_size_its_pass():
    import argparse

    from dualhrq.bench.latency import run_latency_bench
    from dualhrq.errors import HRMError

    args = argparse.Namespace(requests=10, floor=True, bundle=None, connect="tcp://127.0.0.1:1", p95=False,
                              p99=False)
    with pytest.raises(HRMError, match="--floor needs --bundle"):
        run_latency_bench(args)
