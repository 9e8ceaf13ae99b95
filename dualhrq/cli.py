"""The one command-line entry point: `dualhrq <command>` (also `python -m dualhrq`).

Each sub-package that adds commands exposes `register(subparsers)` in its `commands.py`; this module
assembles them, handles errors uniformly and sets up logging, and itself holds the few commands that have no
sub-package of their own: `params`, `config list`, `bench forward` and `demo` (which runs the others).

Building the parser imports neither torch nor onnx: it runs at every start, `dualhrq serve`'s included, and
the serving runtime must start without PyTorch. Handlers import what they need.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Callable

from dualhrq.arguments import nonnegative_int, positive_int
from dualhrq.errors import EXIT_CODES_HELP, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, HRMError
from dualhrq.runtime.logs import LineFormatter

log = logging.getLogger("dualhrq")


def _cmd_params(args: argparse.Namespace) -> int:
    import torch

    from dualhrq.config import load_config
    from dualhrq.model import HRM, ModelInputs
    from dualhrq.model.budget import budget_violations, parameter_table
    from dualhrq.model.diagnostics import convergence_diagnostics

    cfg = load_config(args.config)
    with torch.device("meta"):  # counting needs shapes only: nothing is allocated, however large the config
        rows = parameter_table(HRM(cfg.model), cfg.budget)
    total = sum(r.params for r in rows)
    problems = budget_violations(rows, cfg.budget)
    if args.json:
        print(json.dumps({"config": args.config, "total": total, "violations": problems,
                          "components": {r.component: {"params": r.params, "cap": r.cap} for r in rows}}, indent=2))
    else:
        print(f"{'component':<18}{'params':>14}{'cap':>14}  status")
        for r in rows:
            cap = f"{r.cap:,}" if r.cap is not None else "-"
            print(f"{r.component:<18}{r.params:>14,}{cap:>14}  {'OVER' if r.over else 'ok'}")
        b = cfg.budget
        ok = b.total_min <= total <= b.total_max
        print(f"{'total':<18}{total:>14,}{f'{b.total_min:,}-{b.total_max:,}':>24}  {'ok' if ok else 'OUT'}")
    if args.diagnose:
        torch.manual_seed(0)
        rep = convergence_diagnostics(HRM(cfg.model), ModelInputs.random(cfg.model, 4))
        print("\nconvergence diagnostics (random inputs, untrained weights):")
        for i, (deltas, hn) in enumerate(zip(rep.l_deltas, rep.h_norms)):
            print(f"  cycle {i}: L-state relative change per step {['%.4f' % d for d in deltas]}, |z_H| {hn:.3f}")
    if problems and args.strict:
        for p in problems:
            print(f"budget violation: {p}", file=sys.stderr)
        return 1
    return 0


def _cmd_bench_forward(args: argparse.Namespace) -> int:
    from dualhrq.bench.forward import forward_latency
    from dualhrq.config import load_config

    cfg = load_config(args.config)
    s = forward_latency(cfg, batch_size=args.batch, runs=args.runs, warmup=args.warmup, threads=args.threads)
    m = cfg.model
    print(f"torch eager forward, {args.config}: batch {args.batch}, N={m.n_cycles} T={m.t_steps} "
          f"T_h={m.coarse_len} T_l={m.fine_len}, {s.runs} runs after {args.warmup} warm-up")
    print(f"p50 {s.p50_ms:.2f} ms   p95 {s.p95_ms:.2f} ms   mean {s.mean_ms:.2f} ms")
    return 0


def _cmd_config_list(args: argparse.Namespace) -> int:
    from dualhrq.config import read_yaml, shipped_configs

    for path in shipped_configs():
        first = next((line[1:].strip() for line in path.read_text().splitlines() if line.startswith("#")), "")
        sections = ", ".join(read_yaml(path))
        print(f"{path.stem:<20} {sections:<45} {first}")
    print(f"\n(in {shipped_configs()[0].parent}; pass a name or a path to --config)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from dualhrq.bench.demo import run_demo

    return run_demo(args, main)


def _register_core(sub: argparse._SubParsersAction) -> None:
    from dualhrq.bench.demo import add_demo_args

    d = sub.add_parser("demo", help="the whole system end to end on the bundled data (the README's main command)",
                       description="train (tiny) -> export -> serve -> bench latency with a fail-open phase -> stop")
    add_demo_args(d)
    d.set_defaults(func=_cmd_demo)

    c = sub.add_parser("config", help="the shipped configs (--config takes their names from any directory)")
    c_sub = c.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    c_sub.add_parser("list", help="name, sections and purpose of every shipped config").set_defaults(
        func=_cmd_config_list)

    p = sub.add_parser("params", help="parameter table per component against the budget",
                       description="Instantiate the model from a config and count its parameters per component "
                                   "against the caps in the config's `budget` section.")
    p.add_argument("--config", required=True, help="model config: a YAML path or a shipped name, e.g. hrm_27m")
    p.add_argument("--strict", action="store_true", help="exit 1 naming each component outside its cap")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.add_argument("--diagnose", action="store_true",
                   help="also print convergence diagnostics (L-state change per step, H-state norms)")
    p.set_defaults(func=_cmd_params)


def _register_gpu(sub: argparse._SubParsersAction) -> None:
    from dualhrq.bench import doctor, gpu_check

    doctor.register(sub)
    gpu_check.register(sub, main)  # it runs export and the benches as the commands a user would type


def _register_bench(bench_sub: argparse._SubParsersAction) -> None:
    from dualhrq.bench.engine import HELP as ENGINE_HELP
    from dualhrq.bench.engine import add_engine_args, run_engine_bench
    from dualhrq.bench.latency import HELP, add_latency_args, run_latency_bench
    from dualhrq.patterns.commands import add_index_bench_args, run_index_bench

    p = bench_sub.add_parser("latency", help="end-to-end latency over ZeroMQ (p50..p99.9, errors, fail-open)",
                             description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_latency_args(p)
    p.set_defaults(func=run_latency_bench)
    p = bench_sub.add_parser("engine", help="one segment through PyTorch eager, ONNX Runtime fp32/int8/fp16 and "
                             "TensorRT side by side on real inputs", description=ENGINE_HELP,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    add_engine_args(p)
    p.set_defaults(func=run_engine_bench)
    p = bench_sub.add_parser("index", help="pattern index recall against brute force and query latency")
    add_index_bench_args(p)
    p.set_defaults(func=run_index_bench)


def _register_bench_forward(bench_sub: argparse._SubParsersAction) -> None:
    p = bench_sub.add_parser("forward", help="PyTorch eager forward latency of one segment",
                             description="Median and p95 of one segment's forward pass on this CPU, after warm-up.")
    p.add_argument("--config", default="hrm_27m", help="model config: a YAML path or a shipped name (default "
                   "hrm_27m, the full model: on a CPU a pass takes tens of ms to seconds)")
    p.add_argument("--batch", type=positive_int, default=1, help="windows per forward pass (default 1)")
    p.add_argument("--runs", type=positive_int, default=30, help="timed forward passes (default 30)")
    p.add_argument("--warmup", type=nonnegative_int, default=5, help="untimed forward passes before them (default 5)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch intra-op threads (default: torch's choice)")
    p.set_defaults(func=_cmd_bench_forward)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dualhrq", description="DualHRQ: train, export, serve and benchmark "
                                     "the Hierarchical Reasoning Model on market data.", epilog=EXIT_CODES_HELP)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _register_core(sub)
    _register_gpu(sub)
    bench = sub.add_parser("bench", help="benchmarks (forward, engine, latency, index)")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="BENCH", required=True)
    _register_bench_forward(bench_sub)
    _register_bench(bench_sub)
    for register in _command_registrars():
        register(sub)
    return parser


def _command_registrars() -> list[Callable[[argparse._SubParsersAction], None]]:
    from dualhrq.compliance import commands as compliance
    from dualhrq.data import commands as data
    from dualhrq.evaluate import commands as evaluate
    from dualhrq.export import commands as export
    from dualhrq.patterns import commands as patterns
    from dualhrq.runtime import commands as runtime
    from dualhrq.train import commands as train

    return [data.register, train.register, evaluate.register, patterns.register, export.register, runtime.register,
            compliance.register]


class _BarSafeHandler(logging.StreamHandler):
    """Log lines that never land inside a progress bar: the bars on the same stream are cleared before the line
    and drawn again after it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm  # at the first log line, not for --help

            with tqdm.external_write_mode(file=self.stream):
                super().emit(record)
        except Exception:  # as logging's own handlers do: a log line never raises into the code that logged
            self.handleError(record)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = _BarSafeHandler(sys.stderr)
    handler.setFormatter(LineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
    try:
        return int(args.func(args) or 0)
    except HRMError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except ModuleNotFoundError as e:
        if e.name != "onnxruntime":
            raise
        from dualhrq.contract import ORT_MISSING

        print(f"error: {ORT_MISSING}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as e:  # a path that cannot be made, read or written: a file where a directory goes, a full disk
        logging.getLogger(__name__).debug("the operating system refused", exc_info=True)
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e} (check the paths given, e.g. --out)", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `dualhrq ... | head`: the reader left, nothing is wrong
        sys.stdout = open(os.devnull, "w")
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
