"""`dualhrq bench engine`: one HRM segment through every engine a bundle can run, side by side on real inputs.

Side by side means interleaved: every round times each engine once on the same feeds, in an order that
rotates per round, so load from other processes on a shared machine lands on all engines alike instead of on
whichever ran last. The feeds are what the server would feed: real windows of a bundled dataset through the
runtime's own feature path and pattern retrieval.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from dualhrq.arguments import names, nonnegative_int, positive_int
from dualhrq.bench.machine import machine_description
from dualhrq.bench.report import made_parent, output_file, percentiles_ms, plot_file, plot_latencies
from dualhrq.config import ServeConfig
from dualhrq.cpu import has_vnni, isa_flags, usable_cores
from dualhrq.errors import DataError, HRMError, ModelLoadError

log = logging.getLogger(__name__)

EAGER = "torch-eager"
FLOOR = "floor"
INDEPENDENT = "floor-independent"  # timed in the rounds, reported beside the floor, not as an engine
SPIN = "+spin"

HELP = """\
Time one segment (N x T as exported, batch 1 by default) through PyTorch eager, ONNX Runtime CPU for every
graph precision in the bundle (fp32, int8, fp16), ONNX Runtime CUDA where its provider is installed with a
GPU, and TensorRT where the bundle has an engine and `tensorrt` imports. Rounds are interleaved so every
engine sees the same machine load; each gets --threads intra-op threads (default: the cores this process may
use, from its CPU affinity and cgroup quota). --spin both (the default) times every ONNX Runtime CPU graph
twice, with pools that sleep between nodes and with pools that spin while a run is in progress (`+spin`).

The floor is timed in the same rounds: a graph of exactly the segment's weight matmuls (its own weights, its
shapes at --batch), on the same threads. Its FLOPs over its p50 is ONNX Runtime's GEMM rate at the segment's
shapes on this CPU; its p50 is the least a segment can take here, and every engine's `x floor` is its p50
over that. The header names the CPU and its instruction sets (AVX2, AVX-512, VNNI, BF16, AMX).

The floor is checked independently in the same rounds: the weight matmuls and their FLOPs derived from the
model's config (not the graph), each distinct (M, K, N) timed alone as a graph of as many MatMuls as the
segment runs of it, each on a random weight of its own (so weights stream from memory as the segment's do),
with the same threads and session options, and the shapes' p50s summed. The line below the
floor gives that independent floor, its ratio to the floor (flagged beyond 10%), and any (M, K, N) whose count
differs between the config and the graph.

Inputs are real: windows of a bundled dataset (default: the one the model was trained on) turned into graph
inputs by the runtime's feature path, with pattern context from the bundle's library. Reported per engine:
p50/p90/p95/p99/max, the ratio to the floor, the ratio of eager's p50 and p95 to the engine's (x faster), and
the parity figures the export measured (from the manifest). A request runs between act.min_segments and act.max_segments segments.
"""


def add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", required=True, metavar="B", help="bundle directory written by `dualhrq export`")
    p.add_argument("--runs", type=positive_int, default=200, metavar="N", help="timed rounds (default 200)")
    p.add_argument("--warmup", type=nonnegative_int, default=20, metavar="N", help="untimed rounds first (default 20)")
    p.add_argument("--threads", type=nonnegative_int, default=0, metavar="N",
                   help="intra-op threads per engine (default 0: the cores this process may use)")
    p.add_argument("--spin", choices=("off", "on", "both"), default="both",
                   help="ONNX Runtime CPU pools spin during a run: off, on, or both as separate engines (default)")
    p.add_argument("--batch", type=positive_int, default=1, metavar="B", help="rows per call (default 1)")
    p.add_argument("--dataset", metavar="NAME", help="bundled dataset of the input windows (default: the "
                   "training dataset in the bundle's config)")
    p.add_argument("--windows", type=positive_int, default=64, metavar="N",
                   help="distinct real windows cycled (default 64)")
    p.add_argument("--engines", type=names, metavar="LIST",
                   help="comma-separated subset, e.g. torch-eager,onnx-fp32,onnx-int8 (default: all available)")
    p.add_argument("--json", type=output_file, metavar="F",
                   help="write every figure as JSON (missing directories are made)")
    p.add_argument("--plot", type=plot_file, metavar="F.png", help="latency CDF and histogram per engine, in the "
                   "format the extension names: .png (the default), .pdf, .svg, ...")


@dataclass
class EngineRun:
    name: str
    run: Callable[[dict[str, np.ndarray]], Any]
    close: Callable[[], None]
    parity: dict[str, Any] | None  # the export's figures against PyTorch fp32, if it measured them


def real_feeds(bundle: Any, dataset: str | None, windows: int, batch: int) -> tuple[list[dict], str]:
    """Graph feeds (batch rows each, zero carry) from real windows through the runtime's input path."""
    from dualhrq.bench.requests import ModelInputs, RealWindows  # data and pandas: not for `--help`
    from dualhrq.runtime.host import load_host

    host = load_host(bundle.root, overlay={"serve": {"intra_op_threads": 1, "spinning": False}})
    try:
        name = dataset or host.config.data.datasets[0]
        real = RealWindows.from_dataset(name, ModelInputs(host.needs, host.inputs.coarse_rule, host.inputs.timeframe), pool=windows * batch)
        if len(real.windows) < batch:
            raise DataError(f"--batch: {batch} rows per call, but {name} has only {len(real.windows)} request "
                            "windows")
        rows = []
        for coarse, fine in real.windows:
            prepared = host.prepare_bars(coarse, fine, real.instrument, real.timeframe)
            context, mask = host.pattern_inputs(prepared, timeout_s=5.0)
            rows.append({**prepared.inputs, "pattern_context": context, "pattern_mask": mask})
    finally:
        host.close()
    feeds = []
    for i in range(0, len(rows) - batch + 1, batch):
        group = rows[i:i + batch]
        feed = {k: np.concatenate([r[k] for r in group]) for k in group[0]}
        feed["z_H"], feed["z_L"] = bundle.initial_carry(batch)
        feeds.append(feed)
    return feeds, f"{name}: {len(real.windows)} real windows ({real.instrument} {real.timeframe}), batch {batch}"


def available_engines(bundle: Any, threads: int, batch: int, spin: str = "off"
                      ) -> tuple[list[EngineRun], dict[str, str]]:
    """Every engine this machine can run for `bundle`, and why the others were skipped.

    spin: "off", "on" or "both" for the ONNX Runtime CPU engines (both: each graph twice, `+spin` spinning)."""
    import onnxruntime as ort
    import torch

    from dualhrq.export.engines import make_engine

    torch.set_num_threads(threads)
    precisions = bundle.manifest.precisions
    runs, skipped = [], {}

    def add(name: str, backend: str, precision: str, parity: dict | None, spinning: bool = False) -> None:
        try:
            engine = make_engine(bundle, ServeConfig(backend=backend, precision=precision, intra_op_threads=threads,
                                                     max_batch=batch, spinning=spinning))
        except (ModelLoadError, HRMError, ImportError) as e:
            skipped[name] = str(e)
            return
        runs.append(EngineRun(name, engine.run, engine.close, parity))

    add(EAGER, "torch", "fp32", None)
    for precision in bundle.precisions:
        for spinning in {"off": (False,), "on": (True,), "both": (False, True)}[spin]:
            add(f"onnx-{precision}" + (SPIN if spinning else ""), "onnx-cpu", precision,
                precisions[precision].parity, spinning)
    if "CUDAExecutionProvider" in ort.get_available_providers():
        for precision in bundle.precisions:
            if precision != "int8":  # dynamic int8 is a CPU-only graph
                add(f"onnx-cuda-{precision}", "onnx-cuda", precision, precisions[precision].parity)
    else:
        skipped["onnx-cuda"] = "onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu)"
    trt = bundle.manifest.tensorrt
    if trt.built:
        add("tensorrt", "tensorrt", "fp16", trt.parity)
    else:
        skipped["tensorrt"] = trt.reason or "the bundle has no TensorRT engine (export with --tensorrt)"
    if torch.cuda.is_available():
        for precision in ("fp32", "fp16"):
            add(f"torch-cuda-{precision}", "torch-cuda", precision, None)
    else:
        skipped["torch-cuda"] = "torch sees no CUDA device"
    return runs, skipped


def time_interleaved(engines: list[EngineRun], feeds: list[dict], runs: int, warmup: int,
                     progress: bool = True) -> dict[str, np.ndarray]:
    """Milliseconds per call per engine; round r feeds every engine feeds[r % len(feeds)], in rotated order."""
    times: dict[str, list[float]] = {e.name: [] for e in engines}
    for r in tqdm(range(warmup + runs), desc="rounds", unit="round", disable=not progress, leave=False,
                  mininterval=0.1 if sys.stderr.isatty() else 10.0):
        feed = feeds[r % len(feeds)]
        shift = r % len(engines)
        for e in engines[shift:] + engines[:shift]:
            t0 = time.perf_counter()
            e.run(feed)
            if r >= warmup:
                times[e.name].append(time.perf_counter() - t0)
    return {name: np.asarray(t) * 1e3 for name, t in times.items()}


def summarize_engines(times: dict[str, np.ndarray], engines: list[EngineRun]) -> dict[str, dict[str, Any]]:
    """Percentiles per engine, how many times faster than PyTorch eager at p50 and p95, and how many times
    the floor's p50 (when the floor was timed) at p50 and p95."""
    out = {e.name: {"latency_ms": percentiles_ms(times[e.name]), "mean_ms": float(times[e.name].mean()),
                    "parity": e.parity} for e in engines}
    eager, floor, fp32 = out.get(EAGER), out.get(FLOOR), out.get("onnx-fp32")
    for s in out.values():
        s["x_fp32_p50"] = s["latency_ms"]["p50"] / fp32["latency_ms"]["p50"] if fp32 else None
        s["speedup_vs_eager"] = ({q: eager["latency_ms"][q] / s["latency_ms"][q] for q in ("p50", "p95")}
                                 if eager else None)
        s["x_floor"] = ({q: s["latency_ms"][q] / floor["latency_ms"]["p50"] for q in ("p50", "p95")}
                        if floor else None)
    return out


def format_engines(summary: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'engine':<18}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}{'x floor':>9}{'x eager p50':>13}"
             f"{'x eager p95':>13}   parity vs PyTorch fp32"]
    for name, s in summary.items():
        lat, speed, parity, floor = s["latency_ms"], s["speedup_vs_eager"], s["parity"], s["x_floor"]
        ratio = (f"{speed['p50']:>13.2f}{speed['p95']:>13.2f}" if speed else f"{'-':>13}{'-':>13}")
        if name == EAGER:
            par = "reference"
        elif name == FLOOR:
            par = "the segment's weight matmuls alone"
        elif parity:
            par = (f"max|err| {max(parity['max_abs_err'].values()):.1e}, actions {parity['action_agreement']:.1%}, "
                   f"corr {parity['forecast_corr']['forecast_coarse']:.5f}/"
                   f"{parity['forecast_corr']['forecast_fine']:.5f}")
        else:
            par = "not measured"
        x_floor = f"{floor['p50']:>9.2f}" if floor else f"{'-':>9}"
        lines.append(f"{name:<18}{lat['p50']:>9.2f}{lat['p95']:>9.2f}{lat['p99']:>9.2f}{lat['max']:>9.2f}"
                     f"{x_floor}{ratio}   {par}")
    return "\n".join(lines)


def format_floor(floor: dict[str, Any]) -> str:
    from dualhrq.bench.independent_floor import AGREE_WITHIN

    top = ", ".join(f"{r['m']}x{r['k']}x{r['n']} x{r['count']}" for r in floor["shapes"][:4])
    line = (f"floor: {floor['gflop']:.3f} GFLOP in {floor['weight_matmuls']} weight matmuls at batch "
            f"{floor['batch']} ({top}, ...); ONNX Runtime multiplies them at {floor['gemm_gflops_per_s']:.1f} "
            f"GFLOP/s on {floor['threads']} threads: floor {floor['floor_ms']:.2f} ms (p95 {floor['floor_p95_ms']:.2f})")
    ind = floor["independent"]
    counts = ("the graph's count agrees" if ind["counts_agree"]
              else f"DIFFERS from the graph's: {'; '.join(ind['count_differences'])}")
    verdict = "within" if ind["agrees"] else "DIFFERS by more than"
    return (f"{line}\nindependent floor: {ind['gflop']:.3f} GFLOP in {ind['weight_matmuls']} weight matmuls from the "
            f"config ({counts}); each shape alone on weights of its own, p50s summed: {ind['floor_ms']:.2f} ms = "
            f"{ind['ratio']:.3f} x the floor ({verdict} {AGREE_WITHIN:.0%})")


def run_engine_bench(args: argparse.Namespace) -> int:
    from dualhrq.bench.floor import FloorRun, summarize_floor
    from dualhrq.bench.independent_floor import ShapeTimes, config_matmuls, shape_counts, summarize_independent
    from dualhrq.export.bundle import load_bundle

    bundle = load_bundle(args.bundle, verify=False)  # real_feeds' load_host re-hashes every file before any timing
    m = bundle.config.model
    threads = args.threads or usable_cores()
    feeds, source = real_feeds(bundle, args.dataset, args.windows, args.batch)
    engines, skipped = available_engines(bundle, threads, args.batch, args.spin)
    wanted = args.engines
    if wanted:
        unknown = [w for w in wanted if w not in {e.name for e in engines} | {FLOOR}]
        if unknown:
            raise HRMError(f"--engines: {', '.join(unknown)} not available here (available: "
                           f"{', '.join(e.name for e in engines)}, {FLOOR}; skipped: {', '.join(skipped) or 'none'})")
        engines = [e for e in engines if e.name in wanted]
    check: list[EngineRun] = []  # the independent floor's shapes, timed in the rounds of the floor they check
    if not wanted or FLOOR in wanted:
        floor = FloorRun(bundle.graph_path("fp32"), feeds[0], threads)
        engines.append(EngineRun(FLOOR, floor.run, floor.close, None))
        expected = config_matmuls(m, args.batch)
        shapes = ShapeTimes(shape_counts(expected), threads)
        check = [EngineRun(INDEPENDENT, shapes.run, shapes.close, None)]
    try:
        print(f"bundle {bundle.root}: {bundle.manifest.model_version}, {bundle.manifest.param_count:,} "
              f"parameters, N={m.n_cycles} T={m.t_steps}, T_h={m.coarse_len} T_l={m.fine_len}")
        print(f"inputs: {source}\nmachine: {machine_description()}; {threads} threads per engine")
        print(f"cpu flags: {' '.join(isa_flags()) or 'unknown'} ({'VNNI' if has_vnni() else 'no VNNI'})")
        print(f"{args.runs} interleaved rounds after {args.warmup} warm-up rounds ...", flush=True)
        times = time_interleaved(engines + check, feeds, args.runs, args.warmup)
    finally:
        for e in engines + check:
            e.close()
    times.pop(INDEPENDENT, None)  # not an engine: its figures are per shape, in the floor's summary
    summary = summarize_engines(times, engines)
    floor_summary = None
    if FLOOR in times:
        floor_summary = summarize_floor(floor, times[FLOOR], args.batch, threads)
        floor_summary["independent"] = summarize_independent(expected, floor.matmuls, shapes, args.warmup,
                                                             floor_summary["floor_ms"])
        print(format_floor(floor_summary))
    print(format_engines(summary))
    ratios = [f"{name} {s['x_fp32_p50']:.2f}" for name, s in summary.items()
              if name.startswith("onnx-") and name != "onnx-fp32" and s["x_fp32_p50"] is not None]
    if ratios:
        print(f"p50 as a share of onnx-fp32's: {', '.join(ratios)}")
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    if args.json:
        made = made_parent(args.json)
        args.json.write_text(json.dumps({
            "bundle": str(bundle.root), "model_version": bundle.manifest.model_version,
            "param_count": bundle.manifest.param_count, "n_cycles": m.n_cycles, "t_steps": m.t_steps,
            "batch": args.batch, "threads": threads, "spin": args.spin, "runs": args.runs, "warmup": args.warmup,
            "inputs": source, "machine": machine_description(), "cpu_flags": isa_flags(), "vnni": has_vnni(),
            "date": time.strftime("%Y-%m-%d"), "floor": floor_summary, "engines": summary, "skipped": skipped},
            indent=2))
        print(f"json: {args.json}{made}")
    if args.plot:
        made = made_parent(args.plot)
        plot_latencies(times, args.plot, f"one segment, batch {args.batch}: {bundle.manifest.model_version}")
        print(f"plot: {args.plot}{made}")
    return 0
