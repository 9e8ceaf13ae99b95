"""Build a serialized TensorRT engine (engine.plan) from a segment graph, on TensorRT 10 or 11.

Written against the TensorRT 10 and 11 Python APIs and NOT verified on a machine with TensorRT: none of the
project's machines can install it. `tensorrt` is imported lazily, so everything else works without it.

The network is strongly typed: every tensor keeps the type the ONNX graph gives it, so an engine built from
the fp16 graph computes in fp16 where that graph does and in fp32 where it keeps fp32 (normalisation, the
graph's inputs and outputs). TensorRT 11 removed the weakly typed precision flags (BuilderFlag.FP16) and
builds every network strongly typed; TensorRT 10 needs the STRONGLY_TYPED creation flag for the same. One
optimisation profile covers batch 1..max_batch for every input; the other dimensions are fixed by the graph.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Callable

from dualhrq.errors import ConfigurationError, InferenceError, ModelLoadError
from dualhrq.export.gpu_target import tensorrt_version_problem

log = logging.getLogger(__name__)

DEFAULT_WORKSPACE_MB = 2048


def tensorrt_unavailable_reason() -> str | None:
    """None when an engine can be built here, else why not, in words."""
    try:
        import tensorrt as trt
    except ImportError as e:
        return f"the `tensorrt` Python package (TensorRT 10 or 11) does not import ({e})"
    problem = tensorrt_version_problem(trt.__version__)
    if problem:
        return problem
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    return None


def build_engine(onnx_path: str | Path, plan_path: str | Path, max_batch: int, *, opt_batch: int = 1,
                 workspace_mb: int = DEFAULT_WORKSPACE_MB, timing_cache: str | Path | None = None,
                 progress: Callable[[str], None] = log.info) -> Path:
    """Parse the ONNX graph, build and serialize a strongly typed engine to `plan_path`: its precision is the
    graph's (pass the fp16 graph for an fp16 engine).

    timing_cache: a file of kernel timings; read when it exists (a rebuild then skips most kernel timing)
    and written back after the build. progress: called with human-readable lines during the build.
    """
    reason = tensorrt_unavailable_reason()
    if reason:
        raise ConfigurationError(f"cannot build a TensorRT engine: {reason}")
    if not 1 <= opt_batch <= max_batch:
        raise ConfigurationError(f"opt_batch: must be within 1..max_batch ({max_batch}), got {opt_batch}")
    import tensorrt as trt

    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_strongly_typed(trt))
    parser = trt.OnnxParser(network, logger)
    progress(f"TensorRT {trt.__version__}: parsing {onnx_path.name}")
    if not parser.parse_from_file(str(onnx_path)):  # by path, so external data beside the graph is found
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ModelLoadError(f"TensorRT's ONNX parser rejected {onnx_path}: " + " | ".join(errors))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = tuple(tensor.shape)[1:]
        if any(d < 0 for d in rest):
            raise ModelLoadError(f"{onnx_path}: input {tensor.name} has a dynamic axis besides the batch: "
                                 f"{tuple(tensor.shape)}")
        profile.set_shape(tensor.name, (1, *rest), (opt_batch, *rest), (max_batch, *rest))
    config.add_optimization_profile(profile)

    cache_file = Path(timing_cache) if timing_cache else None
    cached = cache_file.read_bytes() if cache_file and cache_file.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cached), False)  # False: refuse a mismatched cache
    if cached:
        progress(f"TensorRT: timing cache {cache_file} ({len(cached)} bytes)")

    monitor = _progress_monitor(trt, progress)  # must outlive the build: TensorRT holds only a reference
    if monitor is not None:
        config.progress_monitor = monitor
    else:
        progress("TensorRT: building (no progress monitor in this TensorRT; this can take minutes)")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise InferenceError(f"TensorRT could not build an engine from {onnx_path} (see its log above)")
    plan_path.write_bytes(serialized)  # IHostMemory exposes the buffer protocol
    if cache_file:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_bytes(config.get_timing_cache().serialize())
    progress(f"TensorRT: wrote {plan_path} ({plan_path.stat().st_size / 1e6:.1f} MB), batch 1..{max_batch}, "
             f"strongly typed from {onnx_path.name}")
    return plan_path


def _strongly_typed(trt: Any) -> int:
    """create_network's flags: STRONGLY_TYPED where the enum still has it (TensorRT 10; 11 accepts it and
    builds strongly typed regardless), none where a TensorRT 11 dropped the member."""
    flag = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def _progress_monitor(trt: Any, progress: Callable[[str], None]) -> Any | None:
    """An IProgressMonitor reporting top-level phases and every 10% of their steps, or None where the
    installed TensorRT lacks the interface."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class Monitor(trt.IProgressMonitor):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._lock = threading.Lock()  # TensorRT may call from several builder threads
            self._steps: dict[str, int] = {}
            self._reported: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if parent_phase is None:
                with self._lock:
                    self._steps[phase_name], self._reported[phase_name] = num_steps, 0
                    progress(f"TensorRT: {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self._lock:
                total = self._steps.get(phase_name)
                if total:
                    tenth = (step + 1) * 10 // total
                    if tenth > self._reported[phase_name]:
                        self._reported[phase_name] = tenth
                        progress(f"TensorRT: {phase_name} {tenth * 10}%")
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                self._steps.pop(phase_name, None)

    return Monitor()
