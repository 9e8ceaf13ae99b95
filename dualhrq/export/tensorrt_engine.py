"""The native TensorRT engine: a serialized plan (built by `dualhrq export --tensorrt`) run with the v3 tensor
API, its carry resident on the device and each batch size's segment captured in CUDA graphs.

Written against the TensorRT 10 and 11 Python APIs and NOT verified on a machine with TensorRT (none of the
project's machines can install it); the call sequence is checked against a stand-in module in the tests. Device
memory is PyTorch's (dualhrq.export.device_loop), so no CUDA Python binding beyond TensorRT itself is needed.

Per batch size b and carry parity p there is one execution context whose input shapes and tensor addresses are
set once, when b is first used: p reads carry[p] and writes carry[1 - p]. Contexts of one engine never run at
the same time (one stream, one inference thread).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dualhrq.contract import INPUT_NAMES, OUTPUT_NAMES
from dualhrq.errors import ConfigurationError, InferenceError, ModelLoadError
from dualhrq.export.engines import LoopEngine, SegmentLoop
from dualhrq.export.gpu_target import GpuTarget, check_plan_target, current_target, import_tensorrt


class TensorRTEngine(LoopEngine):
    """recorded: the GPU and TensorRT the manifest says the plan was built for; a plan for another (or one that
    records none) is refused before TensorRT deserialises it. device: where the buffers live ("cpu" only for
    tests with a stand-in TensorRT)."""

    def __init__(self, plan: Path, recorded: GpuTarget | None, max_batch: int = 8, cuda_graphs: bool = True,
                 device: str = "cuda") -> None:
        trt = import_tensorrt()
        import torch

        from dualhrq.export.device_loop import DeviceSegments

        if not torch.cuda.is_available():
            raise ConfigurationError("serve.backend: tensorrt needs a CUDA device; torch sees none")
        if not plan.is_file():
            raise ModelLoadError(f"TensorRT plan {plan} not found (export the bundle with --tensorrt)")
        check_plan_target(recorded, current_target(trt.__version__), str(plan))
        self._trt, self._torch = trt, torch
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
        if self._engine is None:
            raise ModelLoadError(f"TensorRT could not deserialize {plan} (see TensorRT's log above)")
        names = {self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)}
        if names != set(INPUT_NAMES + OUTPUT_NAMES):
            raise ModelLoadError(f"{plan}: I/O tensors {sorted(names)} are not the segment graph's")
        shapes: dict[str, tuple[int, ...]] = {}
        dtypes: dict[str, Any] = {}
        for name in INPUT_NAMES + OUTPUT_NAMES:
            shape = tuple(self._engine.get_tensor_shape(name))
            if any(d < 0 for d in shape[1:]):
                raise ModelLoadError(f"{plan}: {name} has a dynamic axis besides the batch: {shape}")
            shapes[name] = shape[1:]
            dtypes[name] = torch.from_numpy(np.empty(0, trt.nptype(self._engine.get_tensor_dtype(name)))).dtype
        self._contexts: dict[tuple[int, int], Any] = {}
        self.name, self.max_batch = "tensorrt", max_batch
        self.device = DeviceSegments(shapes, dtypes, torch.device(device), self._launch, self._bind,
                                     cuda_graphs=cuda_graphs, max_batch=max_batch)

    def _bind(self, bufs: Any) -> None:
        """Two contexts for this batch size, shapes and every address set once."""
        stream = self._stream()
        for parity in (0, 1):
            ctx = self._engine.create_execution_context()
            if ctx is None:
                raise InferenceError(f"tensorrt: no execution context for batch {bufs.batch} (device memory?)")
            ctx.set_optimization_profile_async(0, stream)
            tensors = {**bufs.feeds, **bufs.carry[parity], **bufs.outputs(parity)}
            for name in INPUT_NAMES:
                if not ctx.set_input_shape(name, tuple(tensors[name].shape)):
                    raise InferenceError(f"tensorrt: batch {bufs.batch} is outside the plan's profile for {name}")
            for name in INPUT_NAMES + OUTPUT_NAMES:
                if not ctx.set_tensor_address(name, tensors[name].data_ptr()):
                    raise InferenceError(f"tensorrt: cannot bind {name} at batch {bufs.batch}")
            self._contexts[bufs.batch, parity] = ctx

    def _launch(self, bufs: Any, parity: int) -> None:
        if not self._contexts[bufs.batch, parity].execute_async_v3(self._stream()):
            raise InferenceError("tensorrt: execute_async_v3 returned false")

    def _stream(self) -> int:
        return self.device.stream.cuda_stream if self.device.stream is not None else 0

    def segments(self, inputs: dict[str, np.ndarray], carry: tuple[np.ndarray, np.ndarray]) -> SegmentLoop:
        return self.device.loop(inputs, carry)

    def close(self) -> None:
        self.device.synchronize()
        self._contexts.clear()
        self.device = None  # type: ignore[assignment]  # frees the buffers and graphs before the engine
        del self._engine

