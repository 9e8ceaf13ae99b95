"""`dualhrq demo`: the whole system on the bundled data, in a few minutes on a laptop-class CPU.

train (tiny config, EURUSD hourly) -> export (verified ONNX bundle with its pattern library) -> serve (a real
ZeroMQ server in a subprocess) -> bench (latency over the socket, then the index fault drill) -> stop.
Each step is the same CLI command a user would type; the demo only chains them and says where things went.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dualhrq.errors import HRMError

TRAIN_CONFIG = "config/train_eurusd.yaml"


def add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="where checkpoints, the bundle, reports and plots go")
    p.add_argument("--config", default=TRAIN_CONFIG, help=f"training config (default {TRAIN_CONFIG})")
    p.add_argument("--steps", type=int, default=150, help="training steps (default 150: a couple of minutes)")
    p.add_argument("--requests", type=int, default=400, help="measured requests per bench phase (default 400)")


def _step(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def _done(t0: float) -> None:
    print(f"--- {time.perf_counter() - t0:.1f} s", flush=True)


def run_demo(args: argparse.Namespace) -> int:
    from dualhrq.cli import main as cli
    from dualhrq.train.loop import latest_checkpoint

    out = Path(args.out)
    run_dir, bundle = out / "train", out / "bundle"
    bench_json, bench_plot = out / "bench_latency.json", out / "bench_latency.png"
    t_start = time.perf_counter()

    t0 = _step("1/5 bundled real data")
    if rc := cli(["data", "list"]):
        return rc
    _done(t0)

    t0 = _step(f"2/5 training the tiny HRM ({args.config}, {args.steps} steps; builds the pattern library "
               "from the training window)")
    if rc := cli(["train", "--config", args.config, "--out", str(run_dir), "--steps", str(args.steps)]):
        return rc
    latest = latest_checkpoint(run_dir)
    if latest is None:
        raise HRMError(f"training wrote no checkpoint into {run_dir}")
    _done(t0)

    t0 = _step("3/5 exporting the unrolled ONNX segment (fp32 and int8, parity-checked) into a hashed bundle")
    rc = cli(["export", "--checkpoint", str(latest), "--out", str(bundle), "--int8"])
    if rc == 1 and (bundle / "manifest.json").is_file():
        print("(int8 missed its parity bound and was left out: the demo serves the fp32 graph)")
    elif rc:
        return rc
    if rc := cli(["bundle", "verify", str(bundle)]):
        return rc
    _done(t0)

    t0 = _step("4/5 serving it over ZeroMQ and measuring latency (1 in flight), then with the index drill on")
    rc = cli(["bench", "latency", "--bundle", str(bundle), "--requests", str(args.requests), "--concurrency", "1",
              "--fail-open", "--json", str(bench_json), "--plot", str(bench_plot)])
    if rc:
        return rc
    _done(t0)

    _step("5/5 summary")
    report = json.loads(bench_json.read_text())
    for phase, s in report.items():
        lat = s["latency_ms"]
        print(f"{phase:>10}: p50 {lat['p50']:.2f} ms  p95 {lat['p95']:.2f} ms  p99 {lat['p99']:.2f} ms  "
              f"fail-open {s['fail_open_rate']:.0%}  replies {s['replies_by_kind']}")
    if report.get("normal", {}).get("replies_by_kind", {}).get("signal", 0) == 0:
        raise HRMError("the server answered no signal request successfully")
    print(f"\ncheckpoint: {latest}\nbundle:     {bundle}\nmetrics:    {run_dir / 'metrics.jsonl'}\n"
          f"bench:      {bench_json}\nplot:       {bench_plot}")
    print(f"\ndemo finished in {time.perf_counter() - t_start:.0f} s")
    return 0
