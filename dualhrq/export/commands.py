"""`dualhrq export` and `dualhrq bundle verify`: the command-line face of dualhrq.export.

Registering imports neither torch nor onnx (the defaults come from dualhrq.export.options): every command's
parser is built at each start, `dualhrq serve`'s included. The handlers import the pipeline and the bundle
when run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from dualhrq.arguments import nonnegative_int, positive_int
from dualhrq.errors import EXIT_CHECK_FAILED, EXIT_OK
from dualhrq.export.options import MIN_OPSET, ExportOptions
from dualhrq.export.parity import MIN_PARITY_WINDOWS
from dualhrq.export.tensorrt_build import DEFAULT_WORKSPACE_MB

if TYPE_CHECKING:
    from dualhrq.export.pipeline import ExportResult

# The highest opset torch.onnx's TorchScript exporter (the one dualhrq.export.segment uses, dynamo=False)
# supports: torch.onnx._constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET, 20 in torch 2.13. Above it torch warns
# "not supported" up to its ONNX_MAX_OPSET (23) and then fails. A constant, not read from torch, so that the parser
# imports no torch; a test holds it to torch's.
MAX_OPSET = 20


def _opset(text: str) -> int:
    value = positive_int(text)
    if not MIN_OPSET <= value <= MAX_OPSET:
        raise argparse.ArgumentTypeError(f"must be within {MIN_OPSET}..{MAX_OPSET} (what this torch.onnx exports), "
                                         f"got {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="checkpoint -> bundle: unrolled ONNX segment with verified parity, fp16/int8, TensorRT",
        description="Export one HRM segment (N cycles x T steps, unrolled: no control flow) to ONNX, check it "
                    "against PyTorch on held-out real data (fp32: max abs error <= 1e-4 and identical actions, "
                    "also over several segments with the carry fed back), derive the requested lower-precision "
                    "variants (kept only if forecasts correlate >= 0.999 and actions agree >= 99% with fp32), "
                    "build a TensorRT engine where TensorRT and a GPU exist, and write a hashed bundle. Exit "
                    "status 1 when the fp32 graph missed its bound (no bundle is written) or a requested variant "
                    "(fp16, int8, the TensorRT engine) missed its bound and was not written.")
    p.add_argument("--checkpoint", required=True, type=Path, metavar="CKPT",
                   help="checkpoint directory (model.safetensors + checkpoint.json), or a training run directory: "
                        "its best checkpoint (lowest validation cross-entropy)")
    p.add_argument("--out", required=True, type=Path, metavar="BUNDLE",
                   help="bundle directory to write; a previous bundle there is replaced")
    p.add_argument("--fp16", action="store_true",
                   help="add an fp16 graph (fp16 weights and compute, fp32 inputs/outputs); implies --tensorrt "
                        "where TensorRT imports and a GPU is present")
    p.add_argument("--int8", action="store_true",
                   help="add a dynamic-int8 graph for CPUs: every weight MatMul, the scheme chosen for this CPU "
                        "(VNNI or AVX2 only) and kept only if it holds every parity bound")
    p.add_argument("--tensorrt", action="store_true",
                   help="build a TensorRT 10/11 engine (engine.plan, strongly typed: fp16 from the fp16 graph when "
                        "--fp16 wrote one, else fp32), valid only on this GPU and TensorRT version (recorded in the "
                        "manifest); without TensorRT or a GPU this says so and writes the rest of the bundle")
    p.add_argument("--force", action="store_true",
                   help="keep variants that miss their parity bound; the miss is recorded in the manifest")
    p.add_argument("--patterns", type=Path, metavar="DIR",
                   help="pattern artifacts directory to pack (default: the checkpoint's own, if it has one)")
    p.add_argument("--opset", type=_opset, default=MIN_OPSET, metavar="N",
                   help=f"ONNX opset, {MIN_OPSET}..{MAX_OPSET} (default {MIN_OPSET})")
    p.add_argument("--max-batch", type=int, default=8, metavar="N",
                   help="largest batch of the TensorRT optimisation profile (default 8)")
    p.add_argument("--parity-samples", type=int, default=MIN_PARITY_WINDOWS, metavar="N",
                   help=f"held-out real-data windows used for the parity figures (default {MIN_PARITY_WINDOWS}; "
                        "fewer is recorded as a warning)")
    p.add_argument("--carry-segments", type=int, default=3, metavar="M",
                   help="segments run with the carry fed back in every precision's carry check (default 3)")
    p.add_argument("--carry-samples", type=int, default=ExportOptions.carry_samples, metavar="N",
                   help=f"windows of the carry check, spread evenly over the parity windows (default "
                        f"{ExportOptions.carry_samples})")
    p.add_argument("--threads", type=nonnegative_int, default=2, metavar="N",
                   help="ONNX Runtime intra-op threads for the parity runs (default 2; 0: all cores)")
    p.add_argument("--external-data", action="store_true",
                   help="store graph weights in a .data file beside each graph (automatic above 1 GiB)")
    p.add_argument("--timing-cache", type=Path, metavar="FILE",
                   help="TensorRT timing cache, read if present and updated (default: "
                        "tensorrt_timing.cache beside the bundle)")
    p.add_argument("--workspace-mb", type=positive_int, default=DEFAULT_WORKSPACE_MB, metavar="MB",
                   help=f"TensorRT builder workspace limit (default {DEFAULT_WORKSPACE_MB})")
    p.set_defaults(func=_cmd_export)

    b = subparsers.add_parser("bundle", help="inspect exported bundles")
    bundle_sub = b.add_subparsers(dest="bundle_command", metavar="BUNDLE_COMMAND", required=True)
    v = bundle_sub.add_parser("verify", help="re-hash every file of a bundle against its manifest",
                              description="Re-hash every file of BUNDLE against manifest.json and report changed, "
                                          "missing and extra files. Exit status 1 if any.")
    v.add_argument("bundle", type=Path, metavar="BUNDLE", help="the bundle directory to check")
    v.set_defaults(func=_cmd_verify)


def _cmd_export(args: argparse.Namespace) -> int:
    from dualhrq.export.parity import ParityError
    from dualhrq.export.pipeline import export_bundle
    from dualhrq.train.loop import best_checkpoint

    options = ExportOptions(
        fp16=args.fp16, int8=args.int8, tensorrt=args.tensorrt, force=args.force, patterns=args.patterns,
        opset=args.opset, max_batch=args.max_batch, parity_samples=args.parity_samples,
        carry_segments=args.carry_segments, carry_samples=args.carry_samples, threads=args.threads,
        external_data=True if args.external_data else None,
        timing_cache=args.timing_cache or args.out.parent / "tensorrt_timing.cache", workspace_mb=args.workspace_mb)
    checkpoint = args.checkpoint
    if not (checkpoint / "checkpoint.json").is_file() and best_checkpoint(checkpoint) is not None:
        checkpoint = best_checkpoint(checkpoint)
        print(f"exporting {checkpoint} (the run's best checkpoint)", flush=True)
    try:
        result = export_bundle(checkpoint, args.out, options, progress=lambda line: print(line, flush=True))
    except ParityError as e:  # the check this command exists for failed: not bad input (exit 2)
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    _print_summary(result)
    m = result.manifest
    missing = [p for p, flag in (("fp16", args.fp16), ("int8", args.int8)) if flag and not m.precisions[p].file]
    # Measured and then not written: it missed parity. Not built at all (no TensorRT or GPU here) is no miss.
    if args.tensorrt and m.tensorrt.parity is not None and not m.tensorrt.file:
        missing.append("tensorrt")
    return EXIT_CHECK_FAILED if missing else EXIT_OK


def _print_summary(result: ExportResult) -> None:
    m = result.manifest
    print(f"\nbundle {result.bundle}: {m.model_version}, {m.param_count:,} parameters, "
          f"N={m.n_cycles} T={m.t_steps}, exported in {result.seconds:.1f} s")
    print(f"\n{'file':<40}{'size':>12}")
    for name, entry in m.files.items():
        print(f"{name:<40}{_size(entry.bytes):>12}")
    print(f"\n{'variant':<10}{'file':<22}{'parity':<10}{'max|err|':>10}{'actions':>10}{'corr coarse':>13}"
          f"{'corr fine':>11}")
    rows = [(name, v.file, v.passed, v.forced, v.parity) for name, v in m.precisions.items()]
    trt = m.tensorrt
    if trt.parity:
        rows.append(("tensorrt", trt.file, bool(trt.passed), bool(trt.forced), trt.parity))
    for name, file, passed, forced, p in rows:
        status = "passed" if passed else ("forced" if forced else "MISSED")
        print(f"{name:<10}{file or '(not written)':<22}{status:<10}{max(p['max_abs_err'].values()):>10.2e}"
              f"{p['action_agreement']:>10.1%}{p['forecast_corr']['forecast_coarse']:>13.5f}"
              f"{p['forecast_corr']['forecast_fine']:>11.5f}")
    if not trt.built and trt.reason:
        print(f"tensorrt  not built: {trt.reason}")
    print(f"parity inputs: {m.parity_inputs.source}")
    for warning in result.warnings:
        print(f"warning: {warning}")


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _cmd_verify(args: argparse.Namespace) -> int:
    from dualhrq.export.bundle import load_bundle, verify_bundle

    report = verify_bundle(args.bundle)
    for check in report.checks:
        print(f"{check.status:<8}{check.name}")
    if not report.ok:
        for problem in report.problems:
            print(f"problem: {problem}")
        print(f"{args.bundle}: REFUSED ({len(report.problems)} problem(s))")
        return 1
    bundle = load_bundle(args.bundle, verify=False)  # just verified; this reads and checks the config
    print(f"{args.bundle}: OK, {len(report.checks)} files match the manifest; {bundle.model_version}, "
          f"precisions {', '.join(bundle.precisions)}, N={bundle.manifest.n_cycles} T={bundle.manifest.t_steps}")
    return 0
