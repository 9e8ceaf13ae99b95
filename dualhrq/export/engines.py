"""Engines: one interface that runs ONE segment of the HRM on a batch, whatever executes it.

Every engine takes and returns the segment graph's fixed names (numpy in, numpy out) so the ACT loop, the
batcher and the bench are backend-agnostic. Engines are not thread-safe: exactly one thread (the batcher's
inference thread) calls `run`, which is also where the carry lives between ACT segments.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dualhrq.contract import OUTPUT_NAMES, as_feeds, ort_session
from dualhrq.errors import ConfigurationError, InferenceError, ModelLoadError

if TYPE_CHECKING:
    from dualhrq.config import ServeConfig
    from dualhrq.model import HRM

log = logging.getLogger(__name__)

BACKENDS = ("onnx-cpu", "onnx-cuda", "onnx-tensorrt", "tensorrt", "torch")


class Engine(ABC):
    """Runs one segment. `run` may return arrays it reuses two calls later: callers copy what they keep."""

    name: str
    max_batch: int

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """feeds: every name in INPUT_NAMES, batch first; returns every name in OUTPUT_NAMES."""

    def close(self) -> None:  # noqa: B027 - engines without resources need nothing here
        """Release sessions and device memory."""


# ---------------------------------------------------------------- ONNX Runtime


class OnnxEngine(Engine):
    """ONNX Runtime with the serving settings (dualhrq.contract.ort_session) and I/O binding into
    preallocated outputs (no allocation per call after the first call at a batch size, which the warm-up
    makes)."""

    def __init__(self, graph: Path, backend: str = "onnx-cpu", threads: int = 0, spinning: bool = False,
                 max_batch: int = 8) -> None:
        self._session = ort_session(graph, threads, spinning, backend)
        self.name, self.max_batch = backend, max_batch
        self._binding = self._session.io_binding()
        self._device = "cpu"
        self._out: dict[int, list[dict[str, np.ndarray]]] = {}  # batch size -> two sets of output buffers
        self._flip: dict[int, int] = {}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        b = len(feeds["h_tokens"])
        sets = self._out.get(b)
        feeds = as_feeds(feeds)
        try:
            if sets is None:  # first call at this batch size: learn the output shapes, then bind from now on
                out = dict(zip(OUTPUT_NAMES, self._session.run(list(OUTPUT_NAMES), feeds)))
                self._out[b] = [{k: np.empty_like(v) for k, v in out.items()} for _ in range(2)]
                self._flip[b] = 0
                return out
            # Two buffer sets used in turn: the carry returned by one call is the input of the next, so the
            # next call must write elsewhere.
            i = self._flip[b]
            self._flip[b] = 1 - i
            out = sets[i]
            binding = self._binding
            for name, arr in feeds.items():
                binding.bind_cpu_input(name, arr)
            for name, buf in out.items():
                binding.bind_output(name, self._device, 0, buf.dtype, buf.shape, buf.ctypes.data)
            self._session.run_with_iobinding(binding)
            return out
        except Exception as e:
            raise InferenceError(f"{self.name}: segment failed at batch {b}: {e}") from e

    def close(self) -> None:
        self._binding.clear_binding_inputs()
        self._binding.clear_binding_outputs()
        self._out.clear()


# ---------------------------------------------------------------- PyTorch eager


class TorchEngine(Engine):
    """The HRM itself in eval mode without autograd, through the graph's own signature (the module the ONNX
    graph is traced from): the tests' engine and the bench's eager baseline."""

    def __init__(self, model: HRM, max_batch: int = 8, name: str = "torch") -> None:
        from dualhrq.export.segment import SegmentGraph

        self.graph = SegmentGraph(model.eval())
        self.name, self.max_batch = name, max_batch

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return self.graph.run(feeds)
        except Exception as e:
            raise InferenceError(f"{self.name}: segment failed: {e}") from e


# ---------------------------------------------------------------- native TensorRT


class TensorRTEngine(Engine):
    """A serialized TensorRT 10 engine (built by `dualhrq export --tensorrt`), run with the v3 tensor API.

    Device buffers are torch CUDA tensors, so no CUDA Python binding beyond TensorRT itself is needed.
    """

    def __init__(self, plan: Path, max_batch: int = 8) -> None:
        try:
            import tensorrt as trt
        except ImportError:
            raise ConfigurationError("serve.backend: tensorrt needs the `tensorrt` Python package (TensorRT 10) "
                                     "and a CUDA GPU; neither is importable here. Use onnx-cpu or onnx-cuda") from None
        import torch

        if not torch.cuda.is_available():
            raise ConfigurationError("serve.backend: tensorrt needs a CUDA device; torch sees none")
        if not plan.is_file():
            raise ModelLoadError(f"TensorRT plan {plan} not found (export the bundle with --tensorrt)")
        self._torch, self._trt = torch, trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
        if self._engine is None:
            raise ModelLoadError(f"TensorRT could not deserialize {plan} (built by another TensorRT version?)")
        self._context = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream()
        self._dtypes: dict[str, Any] = {}
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            self._dtypes[name] = torch.from_numpy(np.empty(0, dtype=trt.nptype(self._engine.get_tensor_dtype(name)))).dtype
        self.name, self.max_batch = "tensorrt", max_batch

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch, ctx = self._torch, self._context
        keep = []  # device tensors must outlive the asynchronous execution
        arrays = as_feeds(feeds)
        try:
            with torch.cuda.stream(self._stream):
                for name, array in arrays.items():
                    dev = torch.from_numpy(array).to("cuda", self._dtypes[name], non_blocking=True)
                    keep.append(dev)
                    ctx.set_input_shape(name, tuple(dev.shape))
                    ctx.set_tensor_address(name, dev.data_ptr())
                outs = {}
                for name in OUTPUT_NAMES:
                    out = torch.empty(tuple(ctx.get_tensor_shape(name)), dtype=self._dtypes[name], device="cuda")
                    outs[name] = out
                    ctx.set_tensor_address(name, out.data_ptr())
                if not ctx.execute_async_v3(self._stream.cuda_stream):
                    raise InferenceError("TensorRT execute_async_v3 returned false")
                host = {k: v.to("cpu", torch.float32 if v.is_floating_point() else v.dtype, non_blocking=False)
                        for k, v in outs.items()}
            self._stream.synchronize()
        except InferenceError:
            raise
        except Exception as e:
            raise InferenceError(f"tensorrt: segment failed: {e}") from e
        return {k: v.numpy() for k, v in host.items()}

    def close(self) -> None:
        del self._context, self._engine


# ---------------------------------------------------------------- from a bundle


def make_engine(bundle: Any, serve: ServeConfig) -> Engine:
    """The engine ``serve`` asks for from a bundle (dualhrq.export.bundle.Bundle), with a clear error when
    unavailable. Reads serve.backend, precision, intra_op_threads, spinning and max_batch."""
    backend = serve.backend
    if backend not in BACKENDS:
        raise ConfigurationError(f"serve.backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "tensorrt":
        return TensorRTEngine(bundle.tensorrt_plan_path(), serve.max_batch)
    if backend == "torch":
        from dualhrq.model import HRM

        model = HRM(bundle.config.model)
        model.load_state_dict(bundle.state_dict())
        return TorchEngine(model, serve.max_batch)
    if serve.precision == "int8" and backend == "onnx-cpu":
        _note_int8_scheme(bundle.manifest.precisions["int8"].quantization)
    return OnnxEngine(bundle.graph_path(serve.precision), backend, serve.intra_op_threads, serve.spinning,
                      serve.max_batch)


def _note_int8_scheme(quantization: dict[str, Any] | None) -> None:
    """An int8 graph chosen on a VNNI CPU still loads and serves on an AVX2-only one (ONNX Runtime falls back
    to its AVX2 kernels), but those can saturate on signed weights: say so rather than assume."""
    from dualhrq.cpu import has_vnni

    if quantization and quantization.get("chosen_for") == "vnni" and not has_vnni():
        log.warning("int8 graph (%s) was chosen on a CPU with VNNI; this one has none, so its AVX2 kernels may "
                    "lose accuracy: its parity was measured on the exporting CPU only", quantization.get("scheme"))
