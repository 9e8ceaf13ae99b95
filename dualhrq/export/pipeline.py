"""`dualhrq export` end to end: checkpoint -> unrolled graph(s) with parity figures -> a verified bundle.

Order: the fp32 graph is exported and held to PyTorch (one segment, then M segments with the carry fed
back); reduced precisions are derived from it and held to their bounds; a TensorRT engine is built where
TensorRT and a GPU exist. A variant that misses its bound is dropped, unless `force`, which keeps it and
records the miss. The bundle is assembled in a staging directory and moved into place only when complete,
so a failed export never leaves a half bundle under the requested name.
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import msgspec
import numpy as np
import onnx
import torch

from dualhrq.config import Config
from dualhrq.cpu import has_vnni, isa_flags
from dualhrq.errors import ConfigurationError
from dualhrq.export.bundle import GRAPH_FILES, PLAN_FILE, WEIGHTS_FILE, load_bundle
from dualhrq.export.engine_parity import EngineParity, engine_parity, run_rows
from dualhrq.export.engines import Engine, OnnxEngine
from dualhrq.export.inputs import ParityFeeds, parity_feeds, spread
from dualhrq.export.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    ActSummary,
    GraphSummary,
    Manifest,
    NodeCounts,
    ParityInputs,
    SourceCheckpoint,
    TensorRT,
    Variant,
    write_manifest,
)
from dualhrq.export.options import MIN_OPSET, ExportOptions
from dualhrq.export.parity import MIN_PARITY_WINDOWS, Parity, ParityError, measure_parity, torch_rollout
from dualhrq.export.precision import FP16_CPU_NOTE, int8_schemes, to_fp16, to_int8, weight_matmuls
from dualhrq.export.segment import (
    GraphCheck,
    check_segment_graph,
    export_segment,
    graph_files,
    ort_optimized_counts,
    run_torch,
)
from dualhrq.export.tensorrt_build import build_engine, tensorrt_unavailable_reason
from dualhrq.hashing import sha256_file
from dualhrq.inputs.artifacts import ARTIFACTS_FILE, PATTERNS_DIR
from dualhrq.model import HRM
from dualhrq.patterns.artifacts import load_artifacts
from dualhrq.train.checkpoint import META_FILE, CheckpointMeta, load_checkpoint
from dualhrq.train.checkpoint import WEIGHTS_FILE as CHECKPOINT_WEIGHTS

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
Checked = tuple[Parity, EngineParity]  # a variant's one-segment parity on every window, and its carry check


@dataclass
class ExportResult:
    bundle: Path
    manifest: Manifest
    seconds: float
    warnings: list[str] = field(default_factory=list)


def export_bundle(checkpoint: str | Path, out: str | Path, options: ExportOptions = ExportOptions(),
                  feeds: ParityFeeds | None = None, progress: Progress = log.info) -> ExportResult:
    """Export `checkpoint` into the bundle directory `out` (replacing a previous bundle there).

    feeds: parity inputs to use instead of the held-out real-data windows (their `source` is recorded).
    Raises ParityError when the fp32 graph misses its bound (unless `force`), ConfigurationError for bad
    options or an `out` that is something other than a bundle.
    """
    started = time.perf_counter()
    checkpoint, out = Path(checkpoint), Path(out)
    _check_options(options, out)
    staging = _fresh_staging(out)
    steps = _Steps(progress, 4 + options.fp16 + options.int8 + (options.tensorrt or options.fp16))
    warnings: list[str] = []
    try:
        with steps("loading the checkpoint"):
            model, meta = load_checkpoint(checkpoint)
            patterns = _patterns_source(options.patterns, checkpoint)
            if patterns is not None:
                load_artifacts(patterns, meta.config.patterns)  # refuse a corrupted library before packing it
        with steps("building parity inputs from real data"):
            ref = _reference(model, meta.config, checkpoint, feeds, options, progress, warnings)
        with steps("exporting the fp32 segment graph"):
            fp32 = export_segment(model, staging / GRAPH_FILES["fp32"], options.opset, options.external_data)
            summary = check_segment_graph(fp32)
            precisions = {"fp32": _fp32(fp32, ref, options, progress, warnings)}
        if options.fp16:
            with steps("deriving the fp16 graph"):
                precisions["fp16"] = _fp16(fp32, staging / GRAPH_FILES["fp16"], ref.check_graph, options, progress,
                                           warnings)
        if options.int8:
            with steps("deriving the int8 graph"):
                precisions["int8"] = _int8(fp32, staging / GRAPH_FILES["int8"], ref.check_graph, options, progress,
                                           warnings)
        tensorrt = TensorRT(built=False, requested=options.tensorrt)
        if options.tensorrt or options.fp16:
            with steps("building the TensorRT engine"):
                source = _tensorrt_source(precisions, staging, fp32)
                tensorrt = _tensorrt(source, staging, ref.check, options, progress, warnings)
        with steps("writing the bundle"):
            has_inputs = _copy_checkpoint_files(checkpoint, staging, patterns)
            manifest = write_manifest(staging, _manifest(checkpoint, model, meta, summary, ref, precisions, tensorrt,
                                                         inputs=has_inputs and patterns is not None))
            load_bundle(staging)  # what serve will do: re-hash everything, read the config back
            _swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(out, manifest, time.perf_counter() - started, warnings)


def _check_options(options: ExportOptions, out: Path) -> None:
    if options.opset < MIN_OPSET:
        raise ConfigurationError(f"--opset: {options.opset} is below the minimum {MIN_OPSET}")
    if options.max_batch < 1:
        raise ConfigurationError(f"--max-batch: must be >= 1, got {options.max_batch}")
    if options.parity_samples < 2:
        raise ConfigurationError(f"--parity-samples: need at least 2, got {options.parity_samples}")
    if options.carry_segments < 1:
        raise ConfigurationError(f"--carry-segments: must be >= 1, got {options.carry_segments}")
    if options.carry_samples < 2:
        raise ConfigurationError(f"--carry-samples: need at least 2, got {options.carry_samples}")
    if out.exists() and not (out.is_dir() and ((out / MANIFEST).is_file() or not any(out.iterdir()))):
        raise ConfigurationError(f"--out: {out} exists and is not a bundle; refusing to replace it")


def _fresh_staging(out: Path) -> Path:
    """An empty directory beside `out` to assemble the bundle in, clearing whatever a killed export left there."""
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def _patterns_source(given: Path | None, checkpoint: Path) -> Path | None:
    if given is not None:
        if not Path(given).is_dir():
            raise ConfigurationError(f"--patterns: {given} is not a directory")
        return Path(given)
    own = checkpoint / PATTERNS_DIR
    return own if own.is_dir() else None


@dataclass(frozen=True)
class _Reference:
    """The PyTorch figures every variant is held to, computed once up front, and the checks against them."""

    model: HRM
    feeds: ParityFeeds
    outputs: dict[str, np.ndarray]  # one segment on every parity window
    carry_feeds: dict[str, np.ndarray]
    carry_outputs: list[dict[str, np.ndarray]]  # the carry check's segments on the carry windows
    quantity_span: float
    options: ExportOptions
    progress: Progress

    @property
    def windows(self) -> int:
        return len(self.outputs["policy_logits"])

    def check(self, precision: str, engine: Engine) -> Checked:
        """One segment on every parity window, then the carry over several segments on the carry windows
        (engine_parity: through the loop serving drives)."""
        parity = measure_parity(self.outputs, run_rows(engine, self.feeds.feeds), precision,
                                quantity_span=self.quantity_span)
        carry = engine_parity(self.model, engine, self.carry_feeds, precision, self.options.carry_segments,
                              references=self.carry_outputs)
        self.progress(f"  {precision} {carry.carry_summary()}")
        return parity, carry

    def check_graph(self, precision: str, path: Path) -> Checked:
        engine = OnnxEngine(path, threads=self.options.threads, max_batch=self.windows)
        try:
            return self.check(precision, engine)
        finally:
            engine.close()


def _reference(model: HRM, config: Config, checkpoint: Path, feeds: ParityFeeds | None, options: ExportOptions,
               progress: Progress, warnings: list[str]) -> _Reference:
    """Runs PyTorch once on the parity windows and once on the carry windows; warns when the windows are few."""
    feeds = feeds or parity_feeds(checkpoint, config, options.parity_samples)
    outputs = run_torch(model, feeds.feeds)
    windows = len(outputs["policy_logits"])
    # The carry check's windows spread over all of them, not the first few (a few days of one market).
    carry_rows = spread(windows, options.carry_samples)
    carry_feeds = {name: x[carry_rows] for name, x in feeds.feeds.items()}
    carry_outputs = torch_rollout(model, carry_feeds, options.carry_segments)
    progress(f"  {windows} samples: {feeds.source}")
    if windows < MIN_PARITY_WINDOWS:
        warnings.append(f"parity measured on {windows} held-out windows, fewer than {MIN_PARITY_WINDOWS}: "
                        "a 1% disagreement rate is not resolved")
        log.warning(warnings[-1])
    return _Reference(model, feeds, outputs, carry_feeds, carry_outputs,
                      config.model.quantity_max - config.model.quantity_min, options, progress)


def _fp32(path: Path, ref: _Reference, options: ExportOptions, progress: Progress, warnings: list[str]) -> Variant:
    """The fp32 graph's manifest entry; unlike the other variants a miss stops the export (unless `force`):
    every other variant is derived from this graph."""
    parity, carry = ref.check_graph("fp32", path)
    failures = _failures(parity, carry)
    if failures and not options.force:
        raise ParityError("the fp32 graph does not reproduce PyTorch: " + "; ".join(failures))
    return _judge(parity, carry, path, options, progress, warnings)


def _failures(parity: Parity, carry: EngineParity) -> list[str]:
    """Every bound a variant missed: one segment on every window, then each segment of the carry check (its
    first is the one segment again, on the carry windows)."""
    return list(parity.failures + carry.carry_failures)


def _verdict(parity: Parity, carry: EngineParity, force: bool, progress: Progress, warnings: list[str]) -> bool:
    """Whether a variant passed, said in the progress and, when it missed, in the warnings."""
    failures = _failures(parity, carry)
    verdict = "MISSED, kept by --force" if failures and force else ("MISSED, not written" if failures else "passed")
    progress(f"  {parity.precision}: {parity.summary()}: {verdict}")
    if failures:
        note = f"{parity.precision} missed its parity bound ({'; '.join(failures)})"
        warnings.append(note + (": kept because of --force" if force else ": not written"))
        log.warning(warnings[-1])
    return not failures


def _judge(parity: Parity, carry: EngineParity, path: Path, options: ExportOptions, progress: Progress,
           warnings: list[str], **extra: Any) -> Variant:
    """The manifest entry of one variant; deletes its file when it missed a bound and is not forced."""
    passed = _verdict(parity, carry, options.force, progress, warnings)
    written = passed or options.force
    nodes = None
    if written:
        counts = ort_optimized_counts(path, options.threads)
        nodes = NodeCounts(counts.exported, counts.optimized, counts.fused, counts.op_counts,
                           f"onnxruntime {_ort_version()} CPUExecutionProvider, ORT_ENABLE_ALL")
        progress(f"  {parity.precision}: {counts.exported} nodes, {counts.optimized} after ONNX Runtime's "
                 f"optimisation; fused: {', '.join(f'{op} x{n}' for op, n in counts.fused.items()) or 'none'}")
    else:
        for file in graph_files(path):
            file.unlink()
    return Variant(path.name if written else None, passed, not passed and options.force, parity.to_dict(),
                   f"onnxruntime {_ort_version()} CPUExecutionProvider", carry=carry.to_dict(), nodes=nodes,
                   **extra)


def _fp16(fp32: Path, path: Path, check: Callable[[str, Path], Checked],
          options: ExportOptions, progress: Progress, warnings: list[str]) -> Variant:
    path = to_fp16(fp32, path)
    parity, carry = check("fp16", path)
    return msgspec.structs.replace(_judge(parity, carry, path, options, progress, warnings), note=FP16_CPU_NOTE)


def _int8(fp32: Path, path: Path, check: Callable[[str, Path], Checked],
          options: ExportOptions, progress: Progress, warnings: list[str]) -> Variant:
    """The first int8 scheme for this CPU (VNNI or not) that holds every parity bound; the choice, the CPU it
    was made for and every scheme tried go into the manifest, so a bundle moved to another CPU says what it
    carries instead of assuming it."""
    vnni = has_vnni()
    tried: list[dict[str, Any]] = []
    schemes = int8_schemes(vnni)
    for i, scheme in enumerate(schemes):
        to_int8(fp32, path, scheme)
        parity, carry = check("int8", path)
        failures = _failures(parity, carry)
        tried.append({"scheme": scheme.name, "passed": not failures, "failures": failures})
        if tried[-1]["passed"] or i == len(schemes) - 1:
            break
        progress(f"  int8 {scheme.name}: {parity.summary()}: missed ({'; '.join(tried[-1]['failures'])}), "
                 "trying the next scheme")
    quantization = {"scheme": scheme.name, "weights": scheme.weights, "reduce_range": scheme.reduce_range,
                    "per_channel": scheme.per_channel, "chosen_for": "vnni" if vnni else "avx2 (no vnni)",
                    "cpu_flags": isa_flags(), "scope": scheme.scope,
                    "quantised_matmuls": len(weight_matmuls(onnx.load(str(fp32), load_external_data=False), scheme.scope)),
                    "tried": tried}
    progress(f"  int8 scheme {scheme.name}, chosen for {quantization['chosen_for']}")
    return _judge(parity, carry, path, options, progress, warnings, quantization=quantization)


def _tensorrt_source(precisions: dict[str, Variant], staging: Path, fp32: Path) -> Path:
    """The graph the engine is built from, whose precision it takes: the fp16 one where it was written."""
    fp16 = precisions.get("fp16")
    return staging / fp16.file if fp16 is not None and fp16.file else fp32


def _tensorrt(source: Path, staging: Path, check: Callable[[str, Engine], Checked], options: ExportOptions,
              progress: Progress, warnings: list[str]) -> TensorRT:
    reason = tensorrt_unavailable_reason()
    if reason:
        note = f"TensorRT engine not built: {reason}; the rest of the bundle is written"
        progress(f"  {note}")
        if options.tensorrt:  # asked for explicitly: worth a warning; implied by --fp16: only a note
            warnings.append(note)
        return TensorRT(built=False, requested=options.tensorrt, reason=reason)
    import tensorrt as trt

    from dualhrq.export.gpu_target import current_target
    from dualhrq.export.tensorrt_engine import TensorRTEngine

    target = current_target(trt.__version__)
    plan = build_engine(source, staging / PLAN_FILE, options.max_batch, workspace_mb=options.workspace_mb,
                        timing_cache=options.timing_cache, progress=progress)
    engine = TensorRTEngine(plan, target, options.max_batch)
    try:  # through the loop serving drives: the carry stays on the device, as it will when served
        parity, carry = check("tensorrt", engine)
    finally:
        engine.close()
    passed = _verdict(parity, carry, options.force, progress, warnings)
    written = passed or options.force
    if not written:
        plan.unlink()
    return TensorRT(built=written, requested=options.tensorrt, file=plan.name if written else None,
                    max_batch=options.max_batch, fp16=source.name == GRAPH_FILES["fp16"],
                    tensorrt_version=target.tensorrt_version, passed=passed, forced=not passed and options.force,
                    parity=parity.to_dict(), gpu_name=target.gpu_name, compute_capability=target.compute_capability,
                    carry=carry.to_dict())


def _copy_checkpoint_files(checkpoint: Path, staging: Path, patterns: Path | None) -> bool:
    """Copies the weights and whatever of the input pipeline there is; whether the checkpoint had its inputs file."""
    shutil.copyfile(checkpoint / CHECKPOINT_WEIGHTS, staging / WEIGHTS_FILE)
    has_inputs = (checkpoint / ARTIFACTS_FILE).is_file()
    if has_inputs:
        shutil.copyfile(checkpoint / ARTIFACTS_FILE, staging / ARTIFACTS_FILE)
    if patterns is not None:
        shutil.copytree(patterns, staging / PATTERNS_DIR)
    return has_inputs


def _manifest(checkpoint: Path, model: HRM, meta: CheckpointMeta, summary: GraphCheck, ref: _Reference,
              precisions: dict[str, Variant], tensorrt: TensorRT, inputs: bool) -> Manifest:
    weights_sha = sha256_file(checkpoint / CHECKPOINT_WEIGHTS)
    config, act = meta.config, meta.config.act
    return Manifest(
        format_version=FORMAT_VERSION, model_version=f"hrm-step{meta.step}-{weights_sha[:12]}",
        config=config, param_count=sum(p.numel() for p in model.parameters()),
        n_cycles=config.model.n_cycles, t_steps=config.model.t_steps,
        act=ActSummary(act.min_segments, act.max_segments, act.fixed_segments),
        graph=GraphSummary(summary.opset, summary.node_count, summary.inputs, summary.outputs,
                           summary.inputs[0]["shape"][0]),
        precisions=precisions, tensorrt=tensorrt,
        parity_inputs=ParityInputs(ref.feeds.source, ref.windows),
        versions=_versions(),
        source_checkpoint=SourceCheckpoint(str(checkpoint.resolve()), meta.step, weights_sha,
                                           sha256_file(checkpoint / META_FILE)),
        inputs=inputs, weights=WEIGHTS_FILE)


def _ort_version() -> str:
    # Imported where used: ONNX Runtime is an install extra (cpu or gpu), and `dualhrq --help` must not need it.
    import onnxruntime as ort

    return ort.__version__


def _versions() -> dict[str, str]:
    try:
        dualhrq = importlib.metadata.version("dualhrq")
    except importlib.metadata.PackageNotFoundError:
        dualhrq = "unknown (not installed)"
    return {"dualhrq": dualhrq, "python": platform.python_version(), "torch": str(torch.__version__),
            "onnx": onnx.__version__, "onnxruntime": _ort_version(), "numpy": np.__version__}


def _swap_into_place(staging: Path, out: Path) -> None:
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)


class _Steps:
    """Numbered progress lines with each step's duration: '[2/5] exporting the fp32 segment graph ... 3.1 s'."""

    def __init__(self, progress: Progress, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0
        self._what, self._t0 = "", 0.0

    def __call__(self, what: str) -> _Steps:
        self._what = what
        return self

    def __enter__(self) -> None:
        self.done += 1
        self._t0 = time.perf_counter()
        self.progress(f"[{self.done}/{self.total}] {self._what} ...")

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.progress(f"[{self.done}/{self.total}] {self._what}: done in {time.perf_counter() - self._t0:.1f} s")
