"""The engine floor: the least time one segment can take on this CPU, measured with ONNX Runtime itself.

Nearly all of a segment's arithmetic is its weight matmuls (activation x weight); the rest is element-wise
work, softmaxes and small activation-by-activation products. The floor graph holds exactly the segment's
weight matmuls: the same weights (shared as the unrolled steps share them, so memory traffic is the same),
the activations' shapes at the batch size, the same count, and nothing else. Timed with an engine's own
threads in the same interleaved rounds as the engines, its time is what a segment would cost if every other
node were free, and the segment's FLOPs over that time is ORT's GEMM rate at the segment's own shapes.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from dualhrq.contract import as_feeds, ort_session_options
from dualhrq.errors import ModelLoadError

WEIGHT_MATMUL_OPS = ("MatMul", "Gemm")


@dataclass(frozen=True)
class WeightMatmul:
    """One weight matmul of the segment graph: activation [..., K] times a weight [K, N] (or [K])."""

    node: str
    op: str
    activation: tuple[int, ...]  # the activation's shape at the measured batch size
    k: int
    n: int

    @property
    def m(self) -> int:
        return math.prod(self.activation[:-1])

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n


def _weight_nodes(proto: onnx.ModelProto) -> list[tuple[onnx.NodeProto, tuple[int, int]]]:
    """(node, (K, N)) for every MatMul/Gemm whose second input is an initializer."""
    weights = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    found = []
    for node in proto.graph.node:
        if node.op_type not in WEIGHT_MATMUL_OPS or node.input[1] not in weights:
            continue
        dims = weights[node.input[1]]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Gemm" and attrs.get("transA", 0):
            raise ModelLoadError(f"{node.name}: Gemm with transA is not a weight matmul this count knows")
        if len(dims) == 1:
            kn = (dims[0], 1)
        elif len(dims) == 2:
            kn = (dims[1], dims[0]) if node.op_type == "Gemm" and attrs.get("transB", 0) else (dims[0], dims[1])
        else:
            raise ModelLoadError(f"{node.name}: weight {node.input[1]} has shape {dims}; expected 1-D or 2-D")
        found.append((node, kn))
    return found


def weight_matmuls(graph: str | Path, feeds: dict[str, np.ndarray]) -> list[WeightMatmul]:
    """Every weight matmul of the segment graph at `graph`, with its activation's shape for `feeds`' batch.

    The shapes are read from one unoptimised run that also returns each matmul's activation, so they hold
    whatever the tracer left symbolic."""
    import onnxruntime as ort

    proto = onnx.load(str(graph))
    nodes = _weight_nodes(proto)
    known = {o.name for o in proto.graph.output}
    extra = list(dict.fromkeys(node.input[0] for node, _ in nodes if node.input[0] not in known))
    proto.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in extra)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every name as exported
    session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    values = dict(zip([o.name for o in proto.graph.output], session.run(None, as_feeds(feeds))))
    return [WeightMatmul(node.name, node.op_type, tuple(values[node.input[0]].shape), k, n)
            for node, (k, n) in nodes]


def shape_table(matmuls: list[WeightMatmul]) -> list[dict[str, int]]:
    """Distinct (M, K, N) with their count and FLOPs, the costliest first."""
    counts = Counter((w.m, w.k, w.n) for w in matmuls)
    rows = [{"m": m, "k": k, "n": n, "count": c, "flops": 2 * m * k * n * c} for (m, k, n), c in counts.items()]
    return sorted(rows, key=lambda r: -r["flops"])


def floor_graph(graph: str | Path, matmuls: list[WeightMatmul]) -> onnx.ModelProto:
    """A graph of exactly the segment's weight matmuls on its own weights, one input per activation shape."""
    proto = onnx.load(str(graph))
    by_name = {w.node: w for w in matmuls}
    shapes = sorted({w.activation for w in matmuls})
    input_of = {shape: f"x{i}" for i, shape in enumerate(shapes)}
    nodes, used = [], set()
    for node in proto.graph.node:
        w = by_name.get(node.name)
        if w is None:
            continue
        inputs = [input_of[w.activation], *node.input[1:]]
        used.update(inputs[1:])
        nodes.append(helper.make_node(node.op_type, inputs, [f"y{len(nodes)}"], name=node.name,
                                      **{a.name: helper.get_attribute_value(a) for a in node.attribute}))
    initializers = [t for t in proto.graph.initializer if t.name in used]
    graph_inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))
                    for shape, name in input_of.items()]
    graph_outputs = [helper.make_empty_tensor_value_info(n.output[0]) for n in nodes]
    floor = helper.make_graph(nodes, "weight_matmul_floor", graph_inputs, graph_outputs, initializers)
    return helper.make_model(floor, opset_imports=list(proto.opset_import), ir_version=proto.ir_version)


class FloorRun:
    """The floor graph as a callable the interleaved bench times like an engine (it ignores the feeds)."""

    def __init__(self, graph: str | Path, feeds: dict[str, np.ndarray], threads: int) -> None:
        import onnxruntime as ort

        self.matmuls = weight_matmuls(graph, feeds)
        if not self.matmuls:
            raise ModelLoadError(f"{graph}: no weight matmuls found (is it the segment graph?)")
        proto = floor_graph(graph, self.matmuls)
        self._session = ort.InferenceSession(proto.SerializeToString(), ort_session_options(threads),
                                             providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)  # any values time alike; a fixed seed feeds the same inputs every run
        self._feeds = {i.name: rng.standard_normal([int(d) for d in i.shape]).astype(np.float32)
                       for i in self._session.get_inputs()}
        self.flops = sum(w.flops for w in self.matmuls)

    def run(self, _feeds: object = None) -> None:
        self._session.run(None, self._feeds)

    def close(self) -> None:
        del self._session


def summarize_floor(floor: FloorRun, times_ms: np.ndarray, batch: int, threads: int) -> dict[str, object]:
    """The floor's figures for the report: FLOPs, the measured GEMM rate and the floor itself (its p50)."""
    p50 = float(np.percentile(times_ms, 50))
    return {"batch": batch, "threads": threads, "weight_matmuls": len(floor.matmuls), "gflop": floor.flops / 1e9,
            "floor_ms": p50, "floor_p95_ms": float(np.percentile(times_ms, 95)),
            "gemm_gflops_per_s": floor.flops / 1e9 / (p50 / 1e3),
            "shapes": shape_table(floor.matmuls)}
