"""`dualhrq bench latency`: end-to-end latency of signal requests over real ZeroMQ sockets."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from tqdm import tqdm

from dualhrq.arguments import nonnegative_int, positive_float, positive_int, zmq_address
from dualhrq.bench.loadgen import LoadResult, run_load
from dualhrq.bench.report import (
    format_floor,
    format_load,
    format_summary,
    judge_load,
    made_parent,
    output_file,
    plot_file,
    plot_latencies,
    summarize,
)
from dualhrq.bench.server_process import EchoProcess, ServerProcess, ping
from dualhrq.config import resolve_config
from dualhrq.errors import HRMError

if TYPE_CHECKING:
    from dualhrq.bench.requests import SessionRequestFactory
    from dualhrq.runtime.protocol import AdminReply

HELP = """\
Drive a running server (--connect) or one started here (--bundle) with signal requests built from real data
windows, and report latency percentiles over every request (errors and timeouts included). The windows' coarse
bars are made with the coarse rule the server reports (its pong), as the model was trained. A phase in which no
request got a signal reply fails the run (exit status 2): its figures would time error replies.

Open loop (--rate R): request i is due at start + i/R and its latency is counted from that due time, so a
stall charges every request that should have been sent during it. Counting from the actual send time instead
hides stalls ("coordinated omission"); this is the honest mode for an order gateway that sends on market events.
Closed loop (--concurrency C, the default with C=1): C requests in flight, each reply releases the next; this is
service time at a fixed load and, by construction, cannot see stalls.
Under load (--load F): the closed loop at 1 in flight first, then an open-loop phase `load` at F / (the server's
engine p50 in that first phase) requests per second: F = 0.8 sends 80% of what batch 1 alone could serve. Its
end-to-end p99 is reported beside twice the engine's batch-1 p99 of the first phase, both from the same server
in the same run.

--fail-open adds a second phase with the pattern index drill on (a server started here gets
patterns.fault.delay_ms; with --connect the phase switches patterns off with the admin command instead), to show
what failing open to regime-only conditioning costs.

--floor (with --bundle) adds a last phase against an echo process in place of the server, which does none of the
model's host work: it reads as many bytes as the served graph before each reply (evicting the caches as the
engine does), decodes the request and encodes a reply, and reports the pass as its engine time. Its end-to-end
minus engine is the transport floor, the ZeroMQ round trip between two processes on cold caches, under the
server's own figure. It has no broker hop: compare it with a one-worker server. A second echo phase
(`floor_warm`) makes no pass: the bare round trip on warm caches, the least any reply can cost here.
"""


def add_latency_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--connect", type=zmq_address, metavar="ADDR",
                     help="address of a running server, tcp://HOST:PORT or ipc://PATH, e.g. tcp://127.0.0.1:5555")
    src.add_argument("--bundle", metavar="B", help="start `dualhrq serve --bundle B` here for the run")
    load = p.add_mutually_exclusive_group()
    load.add_argument("--rate", type=positive_float, metavar="R",
                      help="open loop: R requests per second on a fixed schedule")
    load.add_argument("--concurrency", type=positive_int, metavar="C",
                      help="closed loop: keep C requests in flight (default 1)")
    load.add_argument("--load", type=positive_float, metavar="F",
                      help="closed loop at 1 in flight, then open loop at F / its engine p50 (e.g. 0.8)")
    p.add_argument("--requests", type=positive_int, default=1000, metavar="N",
                   help="measured requests per phase (default 1000)")
    p.add_argument("--warmup", type=nonnegative_int, default=50, help="unmeasured requests first (default 50)")
    p.add_argument("--config", help="serve config for a server started here (default: the bundle's)")
    p.add_argument("--workers", type=positive_int, default=1, help="worker processes for a server started here (default 1)")
    p.add_argument("--dataset", default="eurusd_1h", help="bundled dataset the request windows come from (default eurusd_1h)")
    p.add_argument("--timeout-s", type=positive_float, default=5.0,
                   help="a request unanswered this long counts as timeout (default 5)")
    p.add_argument("--session", action="store_true",
                   help="stream mode: each phase opens one session with a full window, then sends every following "
                        "bar of the dataset as an `append` of that one bar (a live gateway's traffic)")
    p.add_argument("--fail-open", action="store_true", help="second phase with the index fault drill on")
    p.add_argument("--drill-delay-ms", type=positive_float, default=50.0,
                   help="index delay of the fail-open drill (default 50 ms, far above any retrieval timeout)")
    p.add_argument("--floor", action="store_true",
                   help="last phases against an echo that only decodes and encodes, after a pass over the graph's "
                        "bytes and without one: the transport floor, cold and warm (needs --bundle)")
    p.add_argument("--admin-token", default="", help="admin token for --connect --fail-open (disable_patterns)")
    alone = p.add_mutually_exclusive_group()  # one bare number: which one it is must not be left to guess
    alone.add_argument("--p95", action="store_true",
                       help="print the p95 in ms alone as the last line (for scripts; not with --p99)")
    alone.add_argument("--p99", action="store_true", help="print the p99 in ms alone as the last line (not with --p95)")
    p.add_argument("--slo-ms", type=positive_float, metavar="X", help="exit 1 when the p95 exceeds X ms")
    p.add_argument("--json", type=output_file, metavar="F",
                   help="write every figure as JSON (missing directories are made)")
    p.add_argument("--plot", type=plot_file, metavar="F.png", help="latency CDF and histogram per phase, in the "
                   "format the extension names: .png (the default), .pdf, .svg, ...")


def _drill_config(base: str | None, delay_ms: float, tmp: Path) -> Path:
    """A serve config that starts from `base` and turns the index fault drill on."""
    over: dict[str, Any] = {"patterns": {"fault": {"delay_ms": delay_ms}},
                            "base": str(resolve_config(base or "serve").resolve())}
    path = tmp / "serve_fail_open.yaml"
    path.write_text(yaml.safe_dump(over))
    return path


def _admin(address: str, cmd: str, token: str) -> AdminReply:
    from dualhrq.runtime.client import Client

    with Client(address, timeout_s=5.0) as c:
        return c.admin(cmd, token)


def _phase(address: str, args: argparse.Namespace, name: str, quiet: bool,
           model_pong: dict | None = None, rate: float | None = None) -> tuple[LoadResult, dict]:
    """``model_pong``: the pong of the server whose model the requests are cut for (default: the one at
    ``address``; the floor's echo has no model of its own). ``rate``: open loop at that rate, whatever the
    arguments say."""
    pong = ping(address, 5.0)
    if not pong or not pong.get("ready"):
        raise HRMError(f"no ready server at {address}")
    from dualhrq.bench.requests import ModelInputs, SessionRequestFactory, SignalRequestFactory  # data, pandas

    inputs = ModelInputs.from_pong(model_pong or pong)
    rate = rate if rate is not None else args.rate
    mode = {"rate": rate} if rate is not None else {"concurrency": args.concurrency or 1}
    if args.session:
        # The warm-up and the measured requests continue one stream: the first append measured follows on.
        factory = SessionRequestFactory.from_dataset(args.dataset, inputs, args.warmup + args.requests,
                                                     session=f"bench-{name}-{uuid.uuid4().hex[:8]}", seed=0)
        _open_session(address, factory, args.timeout_s)
        if args.warmup:
            run_load(address, factory, args.warmup, concurrency=1, timeout_s=args.timeout_s)
        factory = _Offset(factory, args.warmup)
    else:
        factory = SignalRequestFactory.from_dataset(args.dataset, inputs, seed=0)
        if args.warmup:
            run_load(address, factory, args.warmup, concurrency=1, timeout_s=args.timeout_s)
    bar = tqdm(total=args.requests, desc=name, unit="req", disable=quiet, leave=False,
               mininterval=0.1 if sys.stderr.isatty() else 10.0)  # readable CI logs
    run = run_load(address, factory, args.requests, timeout_s=args.timeout_s,
                   progress=lambda k: bar.update(k - bar.n), **mode)
    bar.close()
    return run, summarize(run)


def _open_session(address: str, factory: SessionRequestFactory, timeout_s: float) -> None:
    from dualhrq.runtime.client import Client

    with Client(address, timeout_s=timeout_s) as c:
        c.request(factory.opening)


class _Offset:
    """A request factory continuing another from its ``start``-th request."""

    def __init__(self, factory: SessionRequestFactory, start: int) -> None:
        self.factory, self.start = factory, start

    def __call__(self, i: int, request_id: str) -> dict:
        return self.factory(self.start + i, request_id)


def _graph_bytes(bundle: str, config: str | None) -> int:
    """The size of the graph a server started with ``config`` serves from ``bundle``."""
    from dualhrq.export.bundle import load_bundle
    from dualhrq.export.segment import graph_files
    from dualhrq.runtime.host import read_overlay, serve_settings

    precision = serve_settings(bundle, read_overlay(config) if config else {}, config or "bundle").serve.precision
    return sum(f.stat().st_size for f in graph_files(load_bundle(bundle, verify=False).graph_path(precision)))


def load_rate(batch1: dict, fraction: float) -> float:
    """Requests per second for ``fraction`` of what batch 1 alone serves: fraction / the engine's p50."""
    p50_ms = batch1["engine_ms"]["p50"]
    if not p50_ms > 0:
        raise HRMError("--load: the 1-in-flight phase measured no engine time, so there is no rate to derive")
    return fraction * 1e3 / p50_ms


def _require_signals(report: dict[str, dict]) -> None:
    """Fail a run with a phase that got no signal reply: its percentiles would time errors or timeouts."""
    failed = {name: s["replies_by_kind"] for name, s in report.items() if not s["replies_by_kind"].get("signal")}
    if failed:
        raise HRMError("no request got a signal reply in " + "; ".join(
            f"phase {name} (replies: {', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})"
            for name, kinds in failed.items()) + ": the figures above time errors, not signals")


def run_latency_bench(args: argparse.Namespace) -> int:
    if args.floor and not args.bundle:
        raise HRMError("--floor needs --bundle: the echo reads as many bytes as the bundle's served graph")
    quiet = args.p95 or args.p99
    phases: dict[str, tuple[LoadResult, dict]] = {}
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        if args.bundle:
            srv = stack.enter_context(ServerProcess(args.bundle, args.config, args.workers, tmp / "server.log"))
            address = srv.address
        else:
            address = args.connect
        phases["normal"] = _phase(address, args, "normal", quiet)
        if args.load is not None:
            _require_signals({"normal": phases["normal"][1]})  # no engine time to derive a rate from
            rate = load_rate(phases["normal"][1], args.load)
            phases["load"] = _phase(address, args, "load", quiet, rate=rate)
            phases["load"][1]["offered_rps"] = rate
        if args.fail_open:
            if args.bundle:
                srv.stop()
                drill = _drill_config(args.config, args.drill_delay_ms, tmp)
                with ServerProcess(args.bundle, drill, args.workers, tmp / "server_drill.log") as srv2:
                    phases["fail_open"] = _phase(srv2.address, args, "fail-open", quiet)
            else:
                _admin(address, "disable_patterns", args.admin_token)
                try:
                    phases["fail_open"] = _phase(address, args, "fail-open", quiet)
                finally:
                    _admin(address, "enable_patterns", args.admin_token)
        if args.floor:
            srv.stop()  # the echo alone on the machine, as the server was
            with EchoProcess(_graph_bytes(args.bundle, args.config), tmp / "echo.log") as echo:
                phases["floor"] = _phase(echo.address, args, "floor", quiet, srv.pong)
            with EchoProcess(0, tmp / "echo_warm.log") as echo:
                phases["floor_warm"] = _phase(echo.address, args, "floor-warm", quiet, srv.pong)
    report = {name: s for name, (_, s) in phases.items()}
    for name, s in report.items():
        print(format_summary(name, s))
    _require_signals(report)
    if "floor" in report:
        print(format_floor(report["normal"], report["floor"], report["floor_warm"]))
    if "load" in report:
        report["load"]["against_batch1"] = judge_load(report["normal"], report["load"])
        print(format_load(report["normal"], report["load"], args.load))
    if args.json:
        made = made_parent(args.json)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"json: {args.json}{made}")
    if args.plot:
        series = {n: np.array([x.latency_ms for x in r.samples]) for n, (r, _) in phases.items()}
        made = made_parent(args.plot)
        print(f"plot: {plot_latencies(series, args.plot, 'end-to-end latency over ZeroMQ')}{made}")
    p95 = report["normal"]["latency_ms"]["p95"]
    if args.p95:
        print(f"{p95:.3f}")
    elif args.p99:
        print(f"{report['normal']['latency_ms']['p99']:.3f}")
    if args.slo_ms is not None and p95 > args.slo_ms:
        print(f"SLO missed: p95 {p95:.3f} ms > {args.slo_ms} ms", file=sys.stderr)
        return 1
    return 0
