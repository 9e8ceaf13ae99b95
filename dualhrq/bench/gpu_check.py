"""`dualhrq gpu-check`: the GPU path in one command, one report. Export (fp16 and TensorRT where possible), parity
of every engine through the one Engine interface on the export's held-out windows, the engine's segment and ACT
latency per batch size with and without CUDA graphs, `bench engine`, and `bench latency` over ZeroMQ on every GPU
backend present.

Made to run on a GPU machine that has PyTorch with CUDA, onnx and onnxruntime's CPU build and no package
registry: whatever is missing there (TensorRT, onnxruntime-gpu) is named in the report as skipped, with
`dualhrq doctor`'s reason. On a machine without a GPU it still runs the parity part (torch-cuda on the CPU), so
the command is known to work before GPU time is spent on it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from dualhrq.arguments import names, positive_int, positive_ints
from dualhrq.bench.doctor import diagnose, to_dict
from dualhrq.bench.machine import machine_description
from dualhrq.bench.report import percentiles_ms
from dualhrq.config import ServeConfig, resolve_config
from dualhrq.errors import EXIT_CHECK_FAILED, EXIT_OK, ConfigurationError, HRMError
from dualhrq.export.engines import GPU_BACKENDS, Engine

Cli = Callable[[list[str]], int]
log = logging.getLogger(__name__)
GOAL_P95_MS = 1.0  # end-to-end p95 over ZeroMQ the GPU path aims at on an H100-class GPU

HELP = """\
One short command for a GPU machine: train CONFIG and export it (or export CKPT, or take BUNDLE as it is),
then for every engine this machine can run: parity against PyTorch fp32 through the one Engine interface (one segment, the carry over several
segments, halting agreement) on the export's held-out windows; one segment and one ACT request per batch size
with CUDA graphs on and off; `dualhrq bench engine`; and `dualhrq bench latency` over ZeroMQ for every GPU
backend present. Everything goes into one JSON report (--out). Exit status 1 when an engine misses parity.
"""


def add_gpu_check_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--train", metavar="CONFIG", help="train this config first (e.g. train_eurusd, train_eurusd_27m; "
                     "--steps caps it), then export its best checkpoint: a machine with nothing on it needs no more")
    src.add_argument("--checkpoint", metavar="CKPT", help="export this checkpoint (fp16 and TensorRT where possible)")
    src.add_argument("--bundle", metavar="B", help="check this bundle as it is")
    p.add_argument("--out", required=True, metavar="REPORT.json", help="the report; work files go beside it")
    p.add_argument("--max-batch", type=positive_int, default=8, metavar="N", help="largest batch checked (default 8)")
    p.add_argument("--batches", type=positive_ints, default="1,2,4,8", metavar="LIST",
                   help="batch sizes timed, those up to --max-batch (default 1,2,4,8)")
    p.add_argument("--runs", type=positive_int, default=200, metavar="N",
                   help="timed calls per engine and batch (default 200)")
    p.add_argument("--requests", type=positive_int, default=1000, metavar="N",
                   help="bench latency requests (default 1000)")
    p.add_argument("--segments", type=positive_int, default=3, metavar="M",
                   help="segments of the carry check (default 3)")
    p.add_argument("--steps", type=positive_int, metavar="N",
                   help="with --train: training steps (default: the config's)")
    p.add_argument("--backends", type=names, metavar="LIST", help="only these backends (default: every one present)")
    p.add_argument("--parity-samples", type=positive_int, metavar="N",
                   help="with --train or --checkpoint: the export's held-out parity windows, which the engines' "
                        "parity here reuses (default: export's, 1000; the full model's CPU variants take minutes "
                        "on that many)")
    p.add_argument("--threads", type=positive_int, default=os.cpu_count() or 1, metavar="N",
                   help="ONNX Runtime threads of the export's parity runs (default: every core, %(default)s here)")


def run_gpu_check(args: argparse.Namespace, cli: Cli) -> int:
    batches = sorted({b for b in args.batches if b <= args.max_batch})
    if not batches:
        raise ConfigurationError(f"--batches: none of {', '.join(map(str, args.batches))} is within --max-batch "
                                 f"{args.max_batch}")
    out = Path(args.out)
    work = out.with_name(out.stem + "_work")
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine_description()}
    t0 = time.perf_counter()

    bundle_path = Path(args.bundle) if args.bundle else work / "bundle"
    checkpoint = args.checkpoint
    if args.train:
        print(f"== train {args.train}", flush=True)
        steps = ["--steps", str(args.steps)] if args.steps else []
        if rc := cli(["train", "--config", args.train, "--out", str(work / "train"), "--no-progress", *steps]):
            raise HRMError(f"training failed (exit status {rc}); see its output above")
        checkpoint = str(work / "train")  # export takes a run directory's best checkpoint
    if checkpoint:
        print(f"== export {checkpoint} -> {bundle_path}", flush=True)
        samples = ["--parity-samples", str(args.parity_samples)] if args.parity_samples else []
        rc = cli(["export", "--checkpoint", checkpoint, "--out", str(bundle_path), "--fp16", "--int8", "--tensorrt",
                  "--max-batch", str(args.max_batch), "--carry-segments", str(args.segments),
                  "--threads", str(args.threads), *samples])
        report["export_exit_status"] = rc
        if rc not in (0, 1):  # 1: a reduced precision missed parity and was left out; the rest is there
            raise HRMError(f"export failed (exit status {rc}); see its output above")
    doctor = diagnose(bundle_path)
    report["doctor"] = to_dict(doctor)
    on_gpu = bool(doctor.gpus)
    wanted = set(args.backends) if args.backends else None
    engines = [(name, p) for name, b in doctor.backends.items() if b.available for p in (b.precisions or [])
               if wanted is None or name in wanted]
    report["skipped"] = {name: b.why for name, b in doctor.backends.items() if not b.available}

    from dualhrq.export.bundle import load_bundle

    bundle = load_bundle(bundle_path)
    model = _model(bundle)
    feeds, source = _held_out(bundle)
    report.update(bundle=str(bundle_path), model_version=bundle.model_version, param_count=bundle.manifest.param_count,
                  parity_inputs=source)

    print(f"== parity through the Engine interface ({len(feeds['h_tokens'])} windows: {source})", flush=True)
    report["parity"], failed = _parity(bundle, model, feeds, engines, args)

    timed = [(n, p) for n, p in engines if n in GPU_BACKENDS and (on_gpu or wanted)]
    print(f"== engine latency per batch size: {', '.join(f'{n}/{p}' for n, p in timed) or 'no GPU backend here'}",
          flush=True)
    report["engine_latency"], report["bench_latency"] = {}, {}
    for name, precision in timed:
        key = f"{name}/{precision}"
        failed |= not _phase(report["engine_latency"], key, out, report, lambda: _engine_latency(
            bundle, name, precision, feeds, batches, args.runs, args.max_batch))
        print("\n".join(_engine_lines(key, report["engine_latency"][key])), flush=True)
    if timed:
        print("== bench engine", flush=True)
        failed |= not _phase(report, "bench_engine", out, report, lambda: _bench_engine(cli, bundle_path, work,
                                                                                        args.runs))
        for name, precision in timed:
            print(f"== bench latency, {name} {precision}", flush=True)
            failed |= not _phase(report["bench_latency"], f"{name}/{precision}", out, report, lambda: _latency(
                cli, bundle_path, name, precision, work, args.requests, args.max_batch))
    report["goal_p95_ms"] = GOAL_P95_MS
    report["seconds"] = round(time.perf_counter() - t0, 1)
    _write(out, report)
    print(format_check(report))
    print(f"report: {out}")
    return EXIT_CHECK_FAILED if failed else EXIT_OK


def _phase(into: dict[str, Any], key: str, out: Path, report: dict[str, Any], measure: Callable[[], Any]) -> bool:
    """into[key] = measure(), or the error it raised; the report is written after every phase, so what was
    measured before a break is kept. False when it raised or measured an error."""
    try:
        into[key] = measure()
        return "error" not in into[key]
    except Exception as e:  # one broken GPU step must not lose the figures of the others: it is reported
        log.exception("gpu-check: %s failed", key)
        into[key] = {"error": f"{type(e).__name__}: {e}"}
        return False
    finally:
        _write(out, report)


def _write(out: Path, report: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=_jsonable))


def _bench_engine(cli: Cli, bundle: Path, work: Path, runs: int) -> dict[str, Any]:
    result = work / "bench_engine.json"
    rc = cli(["bench", "engine", "--bundle", str(bundle), "--runs", str(runs), "--warmup", "20", "--json", str(result)])
    return json.loads(result.read_text()) if rc == 0 else {"error": f"bench engine: exit status {rc}"}


def _model(bundle: Any) -> Any:
    from dualhrq.model import HRM

    model = HRM(bundle.config.model)
    model.load_state_dict(bundle.state_dict())
    return model.eval()


def _held_out(bundle: Any) -> tuple[dict[str, np.ndarray], str]:
    """The export's parity windows: the same dataset, config, input artifacts and count give the same rows."""
    from dualhrq.export.inputs import parity_feeds

    samples = max(bundle.manifest.parity_inputs.samples, 2)
    feeds = parity_feeds(bundle.root, bundle.config, samples)
    return feeds.feeds, feeds.source


def _make(bundle: Any, backend: str, precision: str, max_batch: int) -> Engine:
    from dualhrq.export.engines import make_engine

    return make_engine(bundle, ServeConfig(backend=backend, precision=precision, max_batch=max_batch,
                                           intra_op_threads=0, spinning=False))


def _parity(bundle: Any, model: Any, feeds: dict[str, np.ndarray], engines: list[tuple[str, str]],
            args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    from dualhrq.export.engine_parity import engine_parity
    from dualhrq.export.parity import torch_rollout

    results, failed = {}, False
    references = torch_rollout(model, feeds, args.segments)  # every engine is held to the same PyTorch run
    for name, precision in engines:
        key = f"{name}/{precision}"
        try:
            engine = _make(bundle, name, precision, args.max_batch)
        except HRMError as e:
            results[key] = {"error": str(e)}
            failed = True
            continue
        try:
            checked = engine_parity(model, engine, feeds, "tensorrt" if name == "tensorrt" else precision,
                                    args.segments, exact=False if name == "tensorrt" or precision != "fp32" else None,
                                    references=references)
        finally:
            engine.close()
        results[key] = checked.to_dict()
        failed |= not checked.passed
        print(f"  {key:<22}{'passed' if checked.passed else 'FAILED'}: {checked.segment.summary()}; carry max|err| "
              f"{', '.join(f'{e:.1e}' for e in checked.carry_max_abs_err)}; halting "
              f"{', '.join(f'{a:.1%}' for a in checked.halting_agreement)}", flush=True)
        for failure in checked.failures:
            print(f"    {failure}")
    return results, failed


def _engine_latency(bundle: Any, backend: str, precision: str, feeds: dict[str, np.ndarray], batches: list[int],
                    runs: int, max_batch: int) -> dict[str, Any]:
    """Per batch size: one segment (step) and one ACT request of act.max_segments segments (the loop serving
    drives), CUDA graphs on and, where the engine can turn them off, off."""
    act = bundle.config.act
    segments = act.fixed_segments or act.max_segments
    out: dict[str, Any] = {"act_segments": segments}
    for graphs in (True, False):
        try:
            engine = _make(bundle, backend, precision, max_batch)
        except HRMError as e:
            return {"error": str(e)}
        if not graphs and not _graphs_off(engine):
            engine.close()
            continue
        mode = "cuda_graphs" if graphs and _has_graphs(engine) else "no_graphs"
        try:
            out[mode] = {str(b): _time_loop(engine, feeds, b, segments, runs) for b in batches}
            note = getattr(getattr(engine, "device", None), "note", None) or getattr(engine, "note", None)
            if note:
                out.setdefault("notes", []).append(note)
        finally:
            engine.close()
    on, off = out.get("cuda_graphs"), out.get("no_graphs")
    if on and off:
        out["cuda_graph_gain_p50"] = {b: off[b]["segment_ms"]["p50"] / on[b]["segment_ms"]["p50"] for b in on}
    return out


def _has_graphs(engine: Engine) -> bool:
    device = getattr(engine, "device", None)
    return bool(getattr(device, "cuda_graphs", False) or getattr(engine, "cuda_graphs", False))


def _graphs_off(engine: Engine) -> bool:
    """Turn CUDA graphs off on a fresh engine (before any batch size was used); False when it has none."""
    device = getattr(engine, "device", None)
    if getattr(device, "cuda_graphs", False):
        device.cuda_graphs = False
        return True
    return False  # ONNX Runtime's graphs are a session option: its no-graph figures are bench engine's


def _time_loop(engine: Engine, feeds: dict[str, np.ndarray], batch: int, segments: int, runs: int) -> dict[str, Any]:
    inputs = {k: np.ascontiguousarray(v[:batch]) for k, v in feeds.items() if k not in ("z_H", "z_L")}
    carry = (feeds["z_H"][:batch], feeds["z_L"][:batch])
    everything = np.ones(batch, dtype=bool)
    step_ms, act_ms = [], []
    warmup = max(1, min(10, runs // 10))  # the first calls capture graphs and allocate: untimed
    for r in range(warmup + runs):
        t0 = time.perf_counter()
        loop = engine.segments(inputs, carry)
        for _ in range(segments):
            t1 = time.perf_counter()
            loop.step()
            if r >= warmup:
                step_ms.append(time.perf_counter() - t1)
        loop.heads(everything)
        if r >= warmup:
            act_ms.append(time.perf_counter() - t0)
    return {"segment_ms": percentiles_ms(np.asarray(step_ms) * 1e3), "act_ms": percentiles_ms(np.asarray(act_ms) * 1e3)}


def _latency(cli: Cli, bundle: Path, backend: str, precision: str, work: Path, requests: int,
             max_batch: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        config = Path(tmp) / "serve.yaml"
        config.write_text(yaml.safe_dump({"base": str(resolve_config("serve").resolve()),
                                          "serve": {"backend": backend, "precision": precision,
                                                    "max_batch": max_batch}}))
        result = work / f"bench_latency_{backend}_{precision}.json"
        rc = cli(["bench", "latency", "--bundle", str(bundle), "--config", str(config), "--requests", str(requests),
                  "--warmup", "100", "--concurrency", "1", "--json", str(result)])
    if rc not in (0, 1) or not result.is_file():
        return {"error": f"bench latency: exit status {rc}"}
    return json.loads(result.read_text())


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON: {type(x).__name__}")


def _engine_lines(key: str, lat: dict[str, Any]) -> list[str]:
    if "error" in lat:
        return [f"  {key:<22}did not run: {lat['error']}"]
    lines = []
    for mode in ("cuda_graphs", "no_graphs"):
        for b, s in lat.get(mode, {}).items():
            seg, act = s["segment_ms"], s["act_ms"]
            lines.append(f"  {key:<22}{mode:<12} batch {b}: segment p50 {seg['p50']:.3f} / p95 {seg['p95']:.3f} "
                         f"ms, ACT ({lat['act_segments']} segments) p50 {act['p50']:.3f} / p95 {act['p95']:.3f} ms")
    for b, gain in lat.get("cuda_graph_gain_p50", {}).items():
        lines.append(f"  {key:<22}CUDA-graph gain at batch {b}: {gain:.2f}x (segment p50)")
    return lines


def format_check(report: dict[str, Any]) -> str:
    lines = [f"\nGPU check: {report['machine']}", f"bundle {report['bundle']}: {report['model_version']}, "
             f"{report['param_count']:,} parameters"]
    for key, p in report["parity"].items():
        lines.append(f"  parity {key:<22}" + (p["error"] if "error" in p else "passed" if p["passed"] else
                                             "FAILED: " + "; ".join(p["failures"][:3])))
    for key, lat in report["engine_latency"].items():
        lines += _engine_lines(key, lat)
    for key, lat in report.get("bench_latency", {}).items():
        normal = lat.get("normal")
        if normal:
            p95 = normal["latency_ms"]["p95"]
            lines.append(f"  end to end over ZeroMQ, {key}: p50 {normal['latency_ms']['p50']:.3f} p95 {p95:.3f} ms "
                         f"(goal <= {report['goal_p95_ms']} ms: {'met' if p95 <= report['goal_p95_ms'] else 'MISSED'})")
        else:
            lines.append(f"  end to end over ZeroMQ, {key}: did not run ({lat})")
    for name, why in report.get("skipped", {}).items():
        lines.append(f"  skipped {name}: {why}")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction, cli: Cli) -> None:
    p = sub.add_parser("gpu-check", help="the GPU path in one command: export, parity of every engine, engine and "
                       "end-to-end latency per GPU backend, one report", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_gpu_check_args(p)
    p.set_defaults(func=lambda args: run_gpu_check(args, cli))
