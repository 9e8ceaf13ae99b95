"""`dualhrq demo`: the whole system on the bundled data, in a few minutes on a laptop-class CPU.

train (tiny config, EURUSD hourly; held-out figures against the baselines) -> export the best checkpoint
(verified ONNX bundle with its pattern library and decision rule) -> serve held-out windows and count the
served actions -> bench (latency over the socket, then the index fault drill) -> stop. Each step is the same
CLI command a user would type; the demo only chains them and says where things went.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dualhrq.config import Config
from dualhrq.contract import require_onnxruntime
from dualhrq.errors import HRMError
from dualhrq.inputs.artifacts import Artifacts

if TYPE_CHECKING:
    from dualhrq.train.checkpoint import CheckpointMeta

TRAIN_CONFIG = "train_eurusd"  # a shipped config, found by name from any directory


def add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="where checkpoints, the bundle, reports and plots go (default runs/demo)")
    p.add_argument("--config", default=TRAIN_CONFIG, help=f"training config (default {TRAIN_CONFIG})")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps (default: the config's train.steps; the best checkpoint by validation "
                        "cross-entropy is exported)")
    p.add_argument("--requests", type=int, default=400, help="measured requests per bench phase (default 400)")
    p.add_argument("--held-out", type=int, default=300, metavar="N",
                   help="held-out windows sent to the server to count its served actions (default 300)")


def _step(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def _done(t0: float) -> None:
    print(f"--- {time.perf_counter() - t0:.1f} s", flush=True)


def run_demo(args: argparse.Namespace, cli: Callable[[list[str]], int]) -> int:
    """The demo's steps, each one the command a user would type, run through ``cli`` (dualhrq.cli.main: the
    entry point hands itself in, so bench never imports the layer above it)."""
    from dualhrq.train.checkpoint import read_checkpoint_meta
    from dualhrq.train.loop import best_checkpoint

    require_onnxruntime()  # before minutes of training, not at the export after them
    out = Path(args.out)
    run_dir, bundle = out / "train", out / "bundle"
    bench_json, bench_plot = out / "bench_latency.json", out / "bench_latency.png"
    t_start = time.perf_counter()

    t0 = _step("1/6 bundled real data")
    if rc := cli(["data", "list"]):
        return rc
    _done(t0)

    steps = [] if args.steps is None else ["--steps", str(args.steps)]
    if run_dir.exists():  # the demo's own run from an earlier demo: replaced, as its bundle is
        print(f"replacing the previous demo run in {run_dir}")
        shutil.rmtree(run_dir)
    t0 = _step(f"2/6 training the tiny HRM ({args.config}; builds the pattern library from the training window, "
               "keeps the checkpoint with the best validation cross-entropy)")
    if rc := cli(["train", "--config", args.config, "--out", str(run_dir), *steps]):
        return rc
    best = best_checkpoint(run_dir)
    if best is None:
        raise HRMError(f"training wrote no checkpoint into {run_dir}")
    _done(t0)

    t0 = _step("3/6 exporting the best checkpoint's unrolled ONNX segment (fp32 and int8, parity-checked) into a "
               "hashed bundle")
    rc = cli(["export", "--checkpoint", str(best), "--out", str(bundle), "--int8"])
    if rc == 1 and (bundle / "manifest.json").is_file():
        print("(int8 missed its parity bound and was left out: the demo serves the fp32 graph)")
    elif rc:
        return rc
    if rc := cli(["bundle", "verify", str(bundle)]):
        return rc
    _done(t0)

    meta = read_checkpoint_meta(best)
    t0 = _step(f"4/6 serving {args.held_out} held-out {meta.config.data.name} windows and counting the served "
               "actions")
    served = served_actions(bundle, meta.config, args.held_out)
    print("served: " + ", ".join(f"{a} {n}" for a, n in served.items()))
    _done(t0)

    t0 = _step("5/6 serving it over ZeroMQ and measuring latency (1 in flight), then with the index drill on")
    rc = cli(["bench", "latency", "--bundle", str(bundle), "--requests", str(args.requests), "--concurrency", "1",
              "--fail-open", "--json", str(bench_json), "--plot", str(bench_plot)])
    if rc:  # among its failures: a phase in which the server answered no signal request
        return rc
    _done(t0)

    _step("6/6 summary")
    _summary(meta, best, bundle, served, json.loads(bench_json.read_text()))
    print(f"\ncheckpoint: {best}\nbundle:     {bundle}\nmetrics:    {run_dir / 'metrics.jsonl'}\n"
          f"bench:      {bench_json}\nplot:       {bench_plot}")
    print(f"\ndemo finished in {time.perf_counter() - t_start:.0f} s")
    return 0


def _summary(meta: CheckpointMeta, best: Path, bundle: Path, served: dict[str, int],
             report: dict[str, Any]) -> None:
    """The model's held-out figures beside what it served, and the latency of each bench phase."""
    m = meta.metrics
    n_served = sum(served.values())
    non_hold = 1 - served.get("HOLD", 0) / max(n_served, 1)
    print(f"model (held-out tail, {m.get('test_samples')} samples, best checkpoint {best.name}):")
    print(f"  cross-entropy {m.get('test_cross_entropy', float('nan')):.4f}  frequency-only "
          f"{m.get('test_frequency_ce', float('nan')):.4f}  state-only {m.get('test_state_ce', float('nan')):.4f}")
    print(f"  balanced accuracy {m.get('test_balanced_accuracy', float('nan')):.3f}  macro-F1 "
          f"{m.get('test_macro_f1', float('nan')):.3f}  IC of the position {m.get('test_position_ic', float('nan')):+.3f} "
          f"[{m.get('test_position_ic_low', float('nan')):+.3f}, {m.get('test_position_ic_high', float('nan')):+.3f}]")
    print(f"  served over ZeroMQ on {n_served} held-out windows: {100 * non_hold:.1f}% not HOLD")
    rule = Artifacts.read(bundle).decision_rule
    if rule is not None and rule.min_edge is None:
        print(f"  (HOLD by the bundle's decision rule: fitted on the {rule.fitted_on}, it never trades, as no margin of "
              "the model's edge paid the cost there; the probabilities in the replies are the model's own)")
    if m.get("test_input_independent"):
        print("  WARNING: the model looks input-independent (see the training summary above)")
    for phase, s in report.items():
        lat = s["latency_ms"]
        print(f"{phase:>10}: p50 {lat['p50']:.2f} ms  p95 {lat['p95']:.2f} ms  p99 {lat['p99']:.2f} ms  "
              f"fail-open {s['fail_open_rate']:.0%}  replies {s['replies_by_kind']}")


def served_actions(bundle: Path, cfg: Config, n: int) -> dict[str, int]:
    """Actions a served bundle replies for ``n`` windows of the (first) training dataset's held-out tail (from its
    first test sample on: the validation slice that fitted the decision rule lies before it), by action."""
    from collections import Counter

    from dualhrq.bench.requests import ModelInputs, RealWindows
    from dualhrq.bench.server_process import ServerProcess
    from dualhrq.data.sources import load_datasets
    from dualhrq.data.windows import build_dataset
    from dualhrq.runtime.client import Client

    samples = build_dataset(load_datasets(cfg.data), cfg.model, cfg.data, pattern_window=cfg.patterns.window)
    first_test = int(samples.t[samples.test[0]])
    with ServerProcess(bundle) as server:
        windows = RealWindows.from_dataset(cfg.data.datasets[0], ModelInputs.from_pong(server.pong), pool=n, seed=1,
                                           from_ns=first_test)
        client = Client(server.address, timeout_s=10.0)
        try:
            counts = Counter(client.signal(windows.instrument, windows.timeframe, coarse, fine).action
                             for coarse, fine in windows.windows)
        finally:
            client.close()
    return dict(sorted(counts.items()))
