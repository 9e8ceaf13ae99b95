"""Engines: one interface that runs segments of the HRM on a batch, whatever executes it.

Every engine takes and returns the segment graph's fixed names (numpy in, numpy out) so the ACT loop, the
batcher and the bench are backend-agnostic. `run` is one segment, every output back on the host; `segments`
is the ACT loop's view, a SegmentLoop that keeps the carry wherever the engine computes and hands back only
what halting needs (q-logits each segment, heads of the rows that stop). Engines are not thread-safe:
exactly one thread (the batcher's inference thread) calls them.

The GPU engines live in their own modules (tensorrt_engine, ort_cuda, torch_cuda) and import their heavy
dependencies only when one is made.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dualhrq.contract import CARRY, HEADS, INPUT_NAMES, OUTPUT_NAMES, as_feeds, next_carry, ort_session
from dualhrq.errors import ConfigurationError, InferenceError

if TYPE_CHECKING:
    import onnxruntime as ort

    from dualhrq.config import ServeConfig
    from dualhrq.model import HRM

log = logging.getLogger(__name__)

BACKENDS = ("onnx-cpu", "onnx-cuda", "onnx-tensorrt", "tensorrt", "torch", "torch-cuda")
GPU_BACKENDS = ("onnx-cuda", "onnx-tensorrt", "tensorrt", "torch-cuda")
CARRY_INPUTS = tuple(name for name, _ in CARRY)
FEED_NAMES = tuple(name for name in INPUT_NAMES if name not in CARRY_INPUTS)  # what a SegmentLoop is given


def as_outputs(carry: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A SegmentLoop's carry (input names) under the output names a segment gives it."""
    return {out: carry[name] for name, out in CARRY}


class SegmentLoop(ABC):
    """The segments of one batch, the carry kept by the engine between them. Rows are those still running:
    after keep(mask) the next step runs only the rows mask selected, in their order."""

    batch: int

    @abstractmethod
    def step(self) -> np.ndarray:
        """Run one more segment; the running rows' q_logits [batch, 2] (valid until the next call)."""

    @abstractmethod
    def heads(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """HEADS of the running rows a boolean mask selects, as of the last step (owned arrays)."""

    @abstractmethod
    def keep(self, rows: np.ndarray) -> None:
        """Continue with only the running rows a boolean mask selects."""

    @abstractmethod
    def carry(self) -> dict[str, np.ndarray]:
        """The running rows' carry (z_H, z_L) after the last step, on the host: for checks, it costs a copy."""


class Engine(ABC):
    """Runs segments. `run` may return arrays it reuses two calls later: callers copy what they keep."""

    name: str
    max_batch: int

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """feeds: every name in INPUT_NAMES, batch first; returns every name in OUTPUT_NAMES."""

    def segments(self, inputs: dict[str, np.ndarray], carry: tuple[np.ndarray, np.ndarray]) -> SegmentLoop:
        """A loop over the segments of one batch: inputs are the non-carry graph inputs, carry (z_H, z_L) the
        state to start from. This default feeds `run`'s carry back through the host; GPU engines keep it on
        the device."""
        return HostLoop(self, inputs, carry)

    def close(self) -> None:  # noqa: B027 - engines without resources need nothing here
        """Release sessions and device memory."""


class LoopEngine(Engine):
    """An engine that keeps the carry itself (segments is its own); run is one segment of that loop with every
    output copied back, for warm-up, parity and the one-segment bench."""

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        loop = self.segments({n: feeds[n] for n in FEED_NAMES}, (feeds["z_H"], feeds["z_L"]))
        loop.step()
        carry = loop.carry()
        return {**loop.heads(np.ones(loop.batch, dtype=bool)), **as_outputs(carry)}

    @abstractmethod
    def segments(self, inputs: dict[str, np.ndarray], carry: tuple[np.ndarray, np.ndarray]) -> SegmentLoop:
        """See Engine.segments."""


class HostLoop(SegmentLoop):
    """SegmentLoop over Engine.run: every output comes back each segment and the carry is fed back from it."""

    def __init__(self, engine: Engine, inputs: dict[str, np.ndarray], carry: tuple[np.ndarray, np.ndarray]) -> None:
        self._engine = engine
        self._feeds = {**inputs, "z_H": carry[0], "z_L": carry[1]}
        self._out: dict[str, np.ndarray] | None = None
        self.batch = len(inputs["h_tokens"])

    def step(self) -> np.ndarray:
        if self._out is not None:
            self._feeds.update(next_carry(self._out))  # run keeps these buffers intact for one more call
        self._out = self._engine.run(self._feeds)
        return self._out["q_logits"]

    def heads(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {k: self._last()[k][rows] for k in HEADS}

    def keep(self, rows: np.ndarray) -> None:
        self._feeds.update(next_carry(self._last()))
        self._feeds = {k: v[rows] for k, v in self._feeds.items()}
        self._out, self.batch = None, int(np.count_nonzero(rows))

    def carry(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in next_carry(self._last()).items()}

    def _last(self) -> dict[str, np.ndarray]:
        if self._out is None:
            raise InferenceError("segment loop: no segment has run since the loop began or rows were dropped")
        return self._out


# ---------------------------------------------------------------- ONNX Runtime


class _BoundSet:
    """One set of preallocated outputs with its own I/O binding, outputs bound once. An input is bound again
    only when another array is fed for it: the binding holds the array it was given (ORT reads its buffer at
    each run), and a request's ACT segments feed the same arrays, the carry the other set's outputs."""

    def __init__(self, session: ort.InferenceSession, out: dict[str, np.ndarray], device: str) -> None:
        self.out = out
        self.binding = session.io_binding()
        self._fed: dict[str, np.ndarray] = {}
        for name, buf in out.items():
            self.binding.bind_output(name, device, 0, buf.dtype, buf.shape, buf.ctypes.data)

    def bind(self, feeds: dict[str, np.ndarray]) -> None:
        fed = self._fed
        for name, arr in feeds.items():
            if fed.get(name) is not arr:
                self.binding.bind_cpu_input(name, arr)
                fed[name] = arr

    def clear(self) -> None:
        self.binding.clear_binding_inputs()
        self.binding.clear_binding_outputs()
        self._fed.clear()


class OnnxEngine(Engine):
    """ONNX Runtime with the serving settings (dualhrq.contract.ort_session) and I/O binding into
    preallocated outputs (no allocation per call after the first call at a batch size, which the warm-up
    makes)."""

    def __init__(self, graph: Path, backend: str = "onnx-cpu", threads: int = 0, spinning: bool = False,
                 max_batch: int = 8) -> None:
        self._session = ort_session(graph, threads, spinning, backend)
        self.name, self.max_batch = backend, max_batch
        self._device = "cpu"
        self._sets: dict[int, list[_BoundSet]] = {}  # batch size -> two output sets, used in turn
        self._flip: dict[int, int] = {}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        b = len(feeds["h_tokens"])
        sets = self._sets.get(b)
        feeds = as_feeds(feeds)
        try:
            if sets is None:  # first call at this batch size: learn the output shapes, then bind from now on
                out = dict(zip(OUTPUT_NAMES, self._session.run(list(OUTPUT_NAMES), feeds)))
                self._sets[b] = [_BoundSet(self._session, {k: np.empty_like(v) for k, v in out.items()},
                                           self._device) for _ in range(2)]
                self._flip[b] = 0
                return out
            # Two buffer sets used in turn: the carry returned by one call is the input of the next, so the
            # next call must write elsewhere.
            i = self._flip[b]
            self._flip[b] = 1 - i
            bound = sets[i]
            bound.bind(feeds)
            self._session.run_with_iobinding(bound.binding)
            return bound.out
        except Exception as e:
            raise InferenceError(f"{self.name}: segment failed at batch {b}: {e}") from e

    def close(self) -> None:
        for sets in self._sets.values():
            for bound in sets:
                bound.clear()
        self._sets.clear()


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


# ---------------------------------------------------------------- from a bundle


def make_engine(bundle: Any, serve: ServeConfig) -> Engine:
    """The engine ``serve`` asks for from a bundle (dualhrq.export.bundle.Bundle), with a clear error when
    unavailable. Reads serve.backend, precision, intra_op_threads, spinning and max_batch."""
    backend = serve.backend
    if backend not in BACKENDS:
        raise ConfigurationError(f"serve.backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "tensorrt":
        from dualhrq.export.tensorrt_engine import TensorRTEngine

        return TensorRTEngine(bundle.tensorrt_plan_path(), bundle.manifest.tensorrt.target(), serve.max_batch)
    if backend in ("torch", "torch-cuda"):
        from dualhrq.model import HRM

        model = HRM(bundle.config.model)
        model.load_state_dict(bundle.state_dict())
        if backend == "torch":
            return TorchEngine(model, serve.max_batch)
        from dualhrq.export.torch_cuda import TorchCudaEngine

        return TorchCudaEngine(model, serve.precision, serve.max_batch)
    if backend in ("onnx-cuda", "onnx-tensorrt"):
        from dualhrq.export.ort_cuda import OrtCudaEngine, signature_from

        graph = bundle.manifest.graph
        return OrtCudaEngine(bundle.graph_path(serve.precision), backend, signature_from(graph.inputs, graph.outputs),
                             serve.max_batch, cache_dir=bundle.root.parent / f".{bundle.root.name}.ort-trt-cache",
                             fp16=serve.precision == "fp16")
    path = bundle.graph_path(serve.precision)  # first: it names a precision the bundle lacks
    if serve.precision == "int8":
        _note_int8_scheme(bundle.manifest.precisions["int8"].quantization)
    return OnnxEngine(path, backend, serve.intra_op_threads, serve.spinning, serve.max_batch)


def _note_int8_scheme(quantization: dict[str, Any] | None) -> None:
    """An int8 graph chosen on a VNNI CPU still loads and serves on an AVX2-only one (ONNX Runtime falls back
    to its AVX2 kernels), but those can saturate on signed weights: say so rather than assume."""
    from dualhrq.cpu import has_vnni

    if quantization and quantization.get("chosen_for") == "vnni" and not has_vnni():
        log.warning("int8 graph (%s) was chosen on a CPU with VNNI; this one has none, so its AVX2 kernels may "
                    "lose accuracy: its parity was measured on the exporting CPU only", quantization.get("scheme"))
