"""ONNX Runtime on a GPU (`onnx-cuda`, `onnx-tensorrt`): device OrtValues per batch size bound once through I/O
binding, the carry in ping-pong device buffers, and on the CUDA provider a CUDA graph per batch size and parity.

Written against the onnxruntime-gpu Python API (OrtValue.ortvalue_from_shape_and_type, update_inplace,
IOBinding.bind_ortvalue_input/output, RunOptions "gpu_graph_id", the CUDA provider's enable_cuda_graph and the
TensorRT provider's trt_* options) and NOT verified on a GPU: onnxruntime-gpu cannot be installed on the
project's machines. The tests drive it through a stand-in that records the calls and computes with ONNX
Runtime's CPU provider.

Each (batch, parity) has its own binding and graph id: ONNX Runtime captures a graph per id on its first run
and replays it after, against the same OrtValues. Only q_logits comes back each segment and the heads when rows
halt (OrtValue.numpy, a synchronous copy: ONNX Runtime's Python API has no pinned host buffers). When rows halt
the carry of those still running makes one round trip through the host into the smaller batch's buffers: ONNX
Runtime has no device gather outside a graph.

The TensorRT provider gets fp16 (weakly typed, TensorRT 10 only: TensorRT 11 builds from the graph's own
types), an engine and timing cache outside the bundle (a bundle's files are hashed), and one profile for batch
1..max_batch so that warming up every batch size builds one engine, not one per size. Its CUDA graphs are off:
the provider keeps one graph per session, which a varying batch size would invalidate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dualhrq.contract import CARRY, HEADS, INPUT_NAMES, OUTPUT_NAMES, as_feeds, ort_session
from dualhrq.errors import ConfigurationError, InferenceError, ModelLoadError
from dualhrq.export.engines import CARRY_INPUTS, FEED_NAMES, LoopEngine, SegmentLoop

Signature = dict[str, tuple[tuple[int, ...], np.dtype]]  # name -> (shape without the batch axis, dtype)


def signature_from(inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> Signature:
    """The graph's I/O from the manifest's GraphSummary lists ({name, dtype, shape}, batch axis first)."""
    sig = {}
    for entry in inputs + outputs:
        rest = entry["shape"][1:]
        if not all(isinstance(d, int) for d in rest):
            raise ModelLoadError(f"graph {entry['name']}: dynamic axis besides the batch in {entry['shape']}")
        sig[entry["name"]] = (tuple(rest), np.dtype(entry["dtype"]))
    missing = [n for n in INPUT_NAMES + OUTPUT_NAMES if n not in sig]
    if missing:
        raise ModelLoadError(f"graph signature lacks {missing}")
    return sig


def tensorrt_provider_options(sig: Signature, max_batch: int, cache_dir: Path, fp16: bool,
                              device_id: int = 0) -> dict[str, str]:
    def shapes(batch: int) -> str:
        return ",".join(f"{n}:{'x'.join(str(d) for d in (batch, *sig[n][0]))}" for n in INPUT_NAMES)

    return {"device_id": str(device_id), "trt_fp16_enable": "1" if fp16 else "0",
            "trt_engine_cache_enable": "1", "trt_engine_cache_path": str(cache_dir),
            "trt_timing_cache_enable": "1", "trt_timing_cache_path": str(cache_dir),
            "trt_profile_min_shapes": shapes(1), "trt_profile_opt_shapes": shapes(1),
            "trt_profile_max_shapes": shapes(max_batch)}


@dataclass
class _Buffers:
    batch: int
    feeds: dict[str, Any]  # OrtValue per non-carry input
    carry: tuple[dict[str, Any], dict[str, Any]]  # carry[p]: read by parity p
    heads: dict[str, Any]
    bindings: tuple[Any, Any]  # IOBinding per parity
    options: tuple[Any, Any]  # RunOptions per parity (its gpu_graph_id)


class OrtCudaEngine(LoopEngine):
    """backend: onnx-cuda or onnx-tensorrt; sig: the graph's I/O (signature_from the manifest); cache_dir: the
    TensorRT provider's engine and timing cache."""

    def __init__(self, graph: Path, backend: str, sig: Signature, max_batch: int = 8, cache_dir: Path | None = None,
                 fp16: bool = False, cuda_graphs: bool = True, device_id: int = 0) -> None:
        if backend not in ("onnx-cuda", "onnx-tensorrt"):
            raise ConfigurationError(f"serve.backend: {backend!r} is not an ONNX Runtime GPU backend")
        import onnxruntime as ort

        self._ort, self.sig, self.device_id = ort, sig, device_id
        self.name, self.max_batch = backend, max_batch
        self.cuda_graphs = cuda_graphs and backend == "onnx-cuda"
        self.note: str | None = None if self.cuda_graphs or backend == "onnx-cuda" else (
            "CUDA graphs off: the TensorRT provider keeps one graph per session")
        options: dict[str, dict[str, str]] = {"CUDAExecutionProvider": {"device_id": str(device_id)}}
        if backend == "onnx-tensorrt":
            cache = cache_dir or graph.parent.parent / f".{graph.parent.name}.ort-trt-cache"
            cache.mkdir(parents=True, exist_ok=True)
            options["TensorrtExecutionProvider"] = tensorrt_provider_options(sig, max_batch, cache, fp16, device_id)
        if self.cuda_graphs:
            options["CUDAExecutionProvider"]["enable_cuda_graph"] = "1"
        try:
            self._session = ort_session(graph, 1, False, backend, options)
        except ModelLoadError as e:
            if not self.cuda_graphs:
                raise
            # CUDA graph capture needs every node on the CUDA provider; a graph with CPU-placed nodes is refused
            self.cuda_graphs = False
            self.note = f"CUDA graphs off: ONNX Runtime refused them ({e})"
            del options["CUDAExecutionProvider"]["enable_cuda_graph"]
            self._session = ort_session(graph, 1, False, backend, options)
        self._buffers: dict[int, _Buffers] = {}

    def _value(self, name: str, batch: int) -> Any:
        shape, dtype = self.sig[name]
        return self._ort.OrtValue.ortvalue_from_shape_and_type([batch, *shape], dtype, "cuda", self.device_id)

    def buffers(self, batch: int) -> _Buffers:
        if not 1 <= batch <= self.max_batch:
            raise InferenceError(f"{self.name}: batch {batch} is outside 1..{self.max_batch} (serve.max_batch)")
        bufs = self._buffers.get(batch)
        if bufs is not None:
            return bufs
        feeds = {n: self._value(n, batch) for n in FEED_NAMES}
        carry = ({n: self._value(n, batch) for n in CARRY_INPUTS}, {n: self._value(n, batch) for n in CARRY_INPUTS})
        heads = {n: self._value(n, batch) for n in HEADS}
        bindings, options = [], []
        for parity in (0, 1):
            binding = self._session.io_binding()
            for name, value in {**feeds, **carry[parity]}.items():
                binding.bind_ortvalue_input(name, value)
            for name, value in heads.items():
                binding.bind_ortvalue_output(name, value)
            for name, out in CARRY:
                binding.bind_ortvalue_output(out, carry[1 - parity][name])
            run_options = self._ort.RunOptions()
            if self.cuda_graphs:  # ids from 1: 0 is what an unannotated run would capture into
                run_options.add_run_config_entry("gpu_graph_id", str(2 * batch - 1 + parity))
            bindings.append(binding)
            options.append(run_options)
        bufs = self._buffers[batch] = _Buffers(batch, feeds, carry, heads, tuple(bindings), tuple(options))
        return bufs

    def segment(self, bufs: _Buffers, parity: int) -> None:
        try:
            self._session.run_with_iobinding(bufs.bindings[parity], bufs.options[parity])
        except Exception as e:
            raise InferenceError(f"{self.name}: segment failed at batch {bufs.batch}: {e}") from e

    def segments(self, inputs: dict[str, np.ndarray], carry: tuple[np.ndarray, np.ndarray]) -> SegmentLoop:
        return _OrtLoop(self, inputs, carry)

    def close(self) -> None:
        for bufs in self._buffers.values():
            for binding in bufs.bindings:
                binding.clear_binding_inputs()
                binding.clear_binding_outputs()
        self._buffers.clear()


class _OrtLoop(SegmentLoop):
    def __init__(self, engine: OrtCudaEngine, inputs: dict[str, np.ndarray],
                 carry: tuple[np.ndarray, np.ndarray]) -> None:
        self._e = engine
        arrays = as_feeds({**inputs, "z_H": carry[0], "z_L": carry[1]})
        self._host = {n: arrays[n] for n in FEED_NAMES}  # kept: rows that halt are dropped from here
        self.batch = len(arrays["h_tokens"])
        self._bufs = engine.buffers(self.batch)
        self._upload({n: arrays[n] for n in CARRY_INPUTS})

    def _upload(self, carry: dict[str, np.ndarray]) -> None:
        for name in FEED_NAMES:
            self._bufs.feeds[name].update_inplace(self._host[name])
        for name in CARRY_INPUTS:
            self._bufs.carry[0][name].update_inplace(np.ascontiguousarray(carry[name]))
        self._parity = 0

    def step(self) -> np.ndarray:
        self._e.segment(self._bufs, self._parity)
        self._parity = 1 - self._parity
        return self._bufs.heads["q_logits"].numpy()

    def heads(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {name: self._bufs.heads[name].numpy()[rows] for name in HEADS}

    def keep(self, rows: np.ndarray) -> None:
        carry = {name: value[rows] for name, value in self.carry().items()}
        self._host = {name: np.ascontiguousarray(value[rows]) for name, value in self._host.items()}
        self.batch = int(np.count_nonzero(rows))
        self._bufs = self._e.buffers(self.batch)
        self._upload(carry)

    def carry(self) -> dict[str, np.ndarray]:
        return {name: self._bufs.carry[self._parity][name].numpy() for name in CARRY_INPUTS}
