"""The ACT segment loop with the carry resident on a CUDA device: buffers per batch size, ping-pong carry, CUDA
graphs, and only q-logits (every segment) and heads (when rows halt) copied back, through pinned memory.

Shared by the engines whose device memory is PyTorch's (native TensorRT and `torch-cuda`): each supplies a
`Launch` that enqueues one segment from a buffer set's inputs and carry[p] into its heads and carry[1 - p]. For
every batch size there is one buffer set, allocated on first use, whose addresses never change afterwards: the
launch can bind them once, and a CUDA graph captured for (batch size, p) replays against the same memory.
Rows that halt leave through a device gather into the smaller batch size's buffers; nothing crosses PCIe but
the q-logits each segment and the heads of the rows that stop.

On a CPU device (tests, and `torch-cuda` without CUDA) the same code runs with plain tensors and no graphs, so
the loop's logic is exercised where there is no GPU.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from dualhrq.contract import CARRY, HEADS, INPUT_NAMES, OUTPUT_NAMES, as_feeds
from dualhrq.errors import InferenceError
from dualhrq.export.engines import CARRY_INPUTS, FEED_NAMES, SegmentLoop

# Replays before a capture: lazy initialisation (cuBLAS handles, TensorRT's deferred shape work, allocator
# growth) must happen outside the graph.
CAPTURE_WARMUP = 2

log = logging.getLogger(__name__)


@dataclass
class Buffers:
    """One batch size's device memory; addresses fixed for the engine's lifetime."""

    batch: int
    feeds: dict[str, torch.Tensor]  # the non-carry inputs
    carry: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]  # carry[p]: z_H, z_L read by parity p
    heads: dict[str, torch.Tensor]  # HEADS, written by every segment
    host_feeds: dict[str, torch.Tensor]  # pinned staging for uploads
    host_carry: dict[str, torch.Tensor]
    host_q: torch.Tensor  # pinned q_logits
    host_heads: dict[str, torch.Tensor]
    graphs: list[Any] = field(default_factory=lambda: [None, None])  # torch.cuda.CUDAGraph per parity

    def carry_out(self, parity: int) -> dict[str, torch.Tensor]:
        """The carry a segment of parity `parity` writes, by output name."""
        return {out: self.carry[1 - parity][name] for name, out in CARRY}

    def outputs(self, parity: int) -> dict[str, torch.Tensor]:
        return {**self.heads, **self.carry_out(parity)}


Launch = Callable[[Buffers, int], None]  # enqueue one segment of parity p on the loop's stream


class DeviceSegments:
    """Buffer sets per batch size and their CUDA graphs, for one engine on one device.

    row_shapes and dtypes: every graph input and output by name (shape without the batch axis). launch: see
    module doc; prepare: called once per new buffer set (e.g. to bind its addresses) before any launch.
    """

    def __init__(self, row_shapes: dict[str, tuple[int, ...]], dtypes: dict[str, torch.dtype], device: torch.device,
                 launch: Launch, prepare: Callable[[Buffers], None] | None = None, cuda_graphs: bool = True,
                 max_batch: int = 8) -> None:
        missing = [n for n in INPUT_NAMES + OUTPUT_NAMES if n not in row_shapes or n not in dtypes]
        if missing:
            raise InferenceError(f"device loop: no shape or dtype for {missing}")
        self.row_shapes, self.dtypes, self.device, self.max_batch = row_shapes, dtypes, device, max_batch
        self._launch, self._prepare = launch, prepare
        self.on_cuda = device.type == "cuda"
        self.cuda_graphs = cuda_graphs and self.on_cuda
        self.stream = torch.cuda.Stream(device) if self.on_cuda else None
        self._pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None
        self._buffers: dict[int, Buffers] = {}
        self.captured: list[tuple[int, int]] = []  # (batch, parity) of every graph captured, in order
        self.note: str | None = None  # why CUDA graphs were turned off, if they were

    # ------------------------------------------------------------ buffers

    def buffers(self, batch: int) -> Buffers:
        if not 1 <= batch <= self.max_batch:
            raise InferenceError(f"batch {batch} is outside 1..{self.max_batch} (serve.max_batch)")
        bufs = self._buffers.get(batch)
        if bufs is None:
            bufs = self._buffers[batch] = self._allocate(batch)
            if self._prepare is not None:
                self._prepare(bufs)
        return bufs

    def _allocate(self, b: int) -> Buffers:
        def dev(name: str) -> torch.Tensor:
            return torch.zeros((b, *self.row_shapes[name]), dtype=self.dtypes[name], device=self.device)

        def host(name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
            t = torch.zeros((b, *self.row_shapes[name]), dtype=dtype or self.dtypes[name])
            return t.pin_memory() if self.on_cuda else t

        return Buffers(
            batch=b, feeds={n: dev(n) for n in FEED_NAMES},
            carry=({n: dev(n) for n in CARRY_INPUTS}, {n: dev(n) for n in CARRY_INPUTS}),
            heads={n: dev(n) for n in HEADS},
            host_feeds={n: host(n) for n in FEED_NAMES}, host_carry={n: host(n) for n in CARRY_INPUTS},
            host_q=host("q_logits", torch.float32), host_heads={n: host(n, torch.float32) for n in HEADS})

    # ------------------------------------------------------------ running

    def ready(self, batch: int) -> Buffers:
        """The buffer set of `batch`, its graphs captured: call before putting data into it."""
        bufs = self.buffers(batch)
        if self.cuda_graphs and bufs.graphs[0] is None:
            self._capture(bufs)
        return bufs

    def segment(self, bufs: Buffers, parity: int) -> None:
        """Enqueue one segment of `parity`: its captured graph where there is one, else the launch itself."""
        graph = bufs.graphs[parity]
        with self._on_stream():
            if graph is not None:
                graph.replay()
            else:
                self._launch(bufs, parity)

    def _capture(self, bufs: Buffers) -> None:
        """Capture both parities of a buffer set. The warm-up launches write into every buffer of the set, so
        callers capture before they put a batch's data into it (DeviceLoop does). A segment that cannot be
        captured turns graphs off for the engine: it still runs, launch by launch, and `note` says why."""
        with self._on_stream():
            for parity in (0, 1):
                for _ in range(CAPTURE_WARMUP):
                    self._launch(bufs, parity)
        self.stream.synchronize()
        try:
            for parity in (0, 1):
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self._pool, stream=self.stream, capture_error_mode="thread_local"):
                    self._launch(bufs, parity)
                bufs.graphs[parity] = graph
                self.captured.append((bufs.batch, parity))
        except Exception as e:
            self.cuda_graphs = False
            self.note = f"CUDA graphs off: capturing batch {bufs.batch} failed ({e})"
            log.warning("%s; running launch by launch", self.note)
            for other in self._buffers.values():
                other.graphs = [None, None]
            self.synchronize()

    def _on_stream(self) -> Any:
        return torch.cuda.stream(self.stream) if self.on_cuda else nullcontext()

    def synchronize(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()

    def loop(self, inputs: dict[str, np.ndarray], carry: tuple[np.ndarray, np.ndarray]) -> DeviceLoop:
        return DeviceLoop(self, inputs, carry)


class DeviceLoop(SegmentLoop):
    def __init__(self, segments: DeviceSegments, inputs: dict[str, np.ndarray],
                 carry: tuple[np.ndarray, np.ndarray]) -> None:
        self._s = segments
        arrays = as_feeds({**inputs, "z_H": carry[0], "z_L": carry[1]})
        self.batch = len(arrays["h_tokens"])
        bufs = self._bufs = segments.ready(self.batch)
        for name in FEED_NAMES:
            bufs.host_feeds[name].numpy()[...] = arrays[name]
        for name in CARRY_INPUTS:
            bufs.host_carry[name].numpy()[...] = arrays[name]
        with segments._on_stream():
            for name in FEED_NAMES:
                bufs.feeds[name].copy_(bufs.host_feeds[name], non_blocking=True)
            for name in CARRY_INPUTS:
                bufs.carry[0][name].copy_(bufs.host_carry[name], non_blocking=True)
        self._parity = 0  # the carry to read next is carry[parity]

    def step(self) -> np.ndarray:
        s, bufs = self._s, self._bufs
        try:
            s.segment(bufs, self._parity)
            with s._on_stream():
                bufs.host_q.copy_(bufs.heads["q_logits"], non_blocking=True)
            s.synchronize()
        except InferenceError:
            raise
        except Exception as e:
            raise InferenceError(f"device segment failed at batch {bufs.batch}: {e}") from e
        self._parity = 1 - self._parity
        return bufs.host_q.numpy()

    def heads(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        s, bufs = self._s, self._bufs
        with s._on_stream():
            for name in HEADS:
                bufs.host_heads[name].copy_(bufs.heads[name], non_blocking=True)
        s.synchronize()
        return {name: bufs.host_heads[name].numpy()[rows] for name in HEADS}

    def keep(self, rows: np.ndarray) -> None:
        s, old = self._s, self._bufs
        index = np.flatnonzero(rows)
        new = s.ready(len(index))
        with s._on_stream():
            idx = torch.as_tensor(index, device=s.device)
            for name in FEED_NAMES:
                torch.index_select(old.feeds[name], 0, idx, out=new.feeds[name])
            for name in CARRY_INPUTS:
                torch.index_select(old.carry[self._parity][name], 0, idx, out=new.carry[0][name])
        self._bufs, self._parity, self.batch = new, 0, len(index)

    def carry(self) -> dict[str, np.ndarray]:
        s, bufs = self._s, self._bufs
        with s._on_stream():
            for name in CARRY_INPUTS:
                bufs.host_carry[name].copy_(bufs.carry[self._parity][name], non_blocking=True)
        s.synchronize()
        return {name: bufs.host_carry[name].numpy().copy() for name in CARRY_INPUTS}
