"""The `torch-cuda` engine: the HRM itself on a CUDA device, each batch size's segment captured in CUDA graphs,
the carry resident on the device (dualhrq.export.device_loop).

PyTorch with CUDA is the GPU stack most likely to be present, so this is the GPU engine that needs nothing
beyond the base install. fp16 runs under autocast, which keeps reductions and normalisation in fp32. Without
CUDA it runs the same loop on the CPU without graphs: slower than `torch`, but the loop and its parity are
exercised everywhere.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dualhrq.contract import INPUT_NAMES, OUTPUT_NAMES
from dualhrq.errors import ConfigurationError
from dualhrq.export.device_loop import Buffers, DeviceSegments
from dualhrq.export.engines import FEED_NAMES, LoopEngine, SegmentLoop
from dualhrq.export.segment import SegmentGraph, example_feeds, output_shapes

if TYPE_CHECKING:
    from dualhrq.model import HRM

PRECISIONS = ("fp32", "fp16")


class TorchCudaEngine(LoopEngine):
    """device: None picks CUDA device 0 where there is one, else the CPU; cuda_graphs applies on CUDA only."""

    def __init__(self, model: HRM, precision: str = "fp32", max_batch: int = 8, device: str | None = None,
                 cuda_graphs: bool = True) -> None:
        if precision not in PRECISIONS:
            raise ConfigurationError(f"serve.precision: {precision!r} is not one torch-cuda runs "
                                     f"({', '.join(PRECISIONS)}); int8 is a CPU graph (onnx-cpu)")
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigurationError("serve.backend: torch-cuda on a CUDA device, but torch sees none "
                                     "(a CPU-only PyTorch build, or no driver)")
        if precision == "fp16" and dev.type != "cuda":
            raise ConfigurationError("serve.precision: fp16 with torch-cuda needs a CUDA device")
        self.graph = SegmentGraph(model.eval()).to(dev)
        self.precision, self.name, self.max_batch = precision, "torch-cuda", max_batch
        cfg = model.cfg
        row = example_feeds(cfg, 1)
        shapes = {n: tuple(row[n].shape[1:]) for n in INPUT_NAMES}
        shapes.update({n: tuple(int(d) for d in s[1:]) for n, s in output_shapes(cfg).items()})
        dtypes = {n: torch.from_numpy(row[n]).dtype for n in INPUT_NAMES}
        dtypes.update({n: torch.float32 for n in OUTPUT_NAMES})
        self.device = DeviceSegments(shapes, dtypes, dev, self._launch, cuda_graphs=cuda_graphs, max_batch=max_batch)

    def _autocast(self) -> Any:
        # cache off: a cached fp16 weight copy made during capture would be freed under the graph's feet
        return (torch.autocast("cuda", torch.float16, cache_enabled=False) if self.precision == "fp16"
                else nullcontext())

    def _launch(self, bufs: Buffers, parity: int) -> None:
        args = [bufs.feeds[n] if n in FEED_NAMES else bufs.carry[parity][n] for n in INPUT_NAMES]
        outputs = bufs.outputs(parity)
        with torch.no_grad(), self._autocast():
            for name, value in zip(OUTPUT_NAMES, self.graph(*args)):
                outputs[name].copy_(value)

    def segments(self, inputs: dict[str, np.ndarray], carry: tuple[np.ndarray, np.ndarray]) -> SegmentLoop:
        return self.device.loop(inputs, carry)

    def close(self) -> None:
        self.device.synchronize()
