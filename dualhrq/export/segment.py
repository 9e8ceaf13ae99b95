"""One HRM segment as a flat-signature module, and its export to a static, unrolled ONNX graph.

The graph is the serving contract (dualhrq.contract): the runtime feeds INPUT_NAMES and reads
OUTPUT_NAMES, nothing else. The N cycles x T steps of `HRM.forward` are Python loops, so tracing unrolls
them: the graph has no control flow, and N and T are fixed for its lifetime (they are written into the
graph's metadata and the bundle manifest; changing them means exporting again).
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from dualhrq.config import ModelConfig
from dualhrq.contract import BATCH_AXIS, INPUT_NAMES, OUTPUT_NAMES, as_feeds, zero_carry
from dualhrq.errors import ConfigurationError, ModelLoadError
from dualhrq.export.options import MIN_OPSET
from dualhrq.model import ACTIONS, HRM, Carry, ModelInputs

log = logging.getLogger(__name__)

CONTROL_FLOW_OPS = frozenset({"Loop", "Scan", "If"})
# A protobuf message cannot exceed 2 GiB; above this the weights go to a side file (ONNX external data).
EXTERNAL_DATA_ABOVE_BYTES = 1 << 30


class SegmentGraph(nn.Module):
    """The HRM with the graph's flat signature: tensors in INPUT_NAMES order in, OUTPUT_NAMES order out."""

    def __init__(self, model: HRM) -> None:
        super().__init__()
        self.model = model

    def forward(self, h_tokens: torch.Tensor, l_tokens: torch.Tensor, instrument_id: torch.Tensor,
                timeframe_id: torch.Tensor, regime_features: torch.Tensor, pattern_context: torch.Tensor,
                pattern_mask: torch.Tensor, z_H: torch.Tensor, z_L: torch.Tensor) -> tuple[torch.Tensor, ...]:
        inputs = ModelInputs(h_tokens, l_tokens, instrument_id, timeframe_id, regime_features, pattern_context,
                             pattern_mask)
        carry, out = self.model(inputs, Carry(z_H, z_L))
        # Probabilities, not logits: every consumer of the graph wants them, and the softmax is free inside it.
        regime_probs = torch.softmax(out.regime_logits, dim=-1)
        return (out.policy_logits, out.quantity, out.value, out.q_logits, out.forecast_coarse, out.forecast_fine,
                regime_probs, carry.z_H, carry.z_L)

    @torch.inference_mode()
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One segment on numpy feeds (converted as for the graph), every output by name: what a session on
        the exported graph returns. The arrays share memory with this call's fresh output tensors."""
        outs = self(*(torch.from_numpy(a) for a in as_feeds(feeds).values()))
        return {name: t.numpy() for name, t in zip(OUTPUT_NAMES, outs)}


def example_feeds(cfg: ModelConfig, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Synthetic feeds of the graph's shapes and dtypes, with the zero initial carry.

    For tracing and shape checks only: parity figures use real-data feeds (dualhrq.export.inputs).
    """
    x = ModelInputs.random(cfg, batch_size, seed)
    z_H, z_L = zero_carry(cfg, batch_size)
    return {**{f.name: getattr(x, f.name).numpy() for f in fields(x)}, "z_H": z_H, "z_L": z_L}


def run_torch(model: HRM, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The PyTorch eval-mode reference for the graph: the same feeds, the same output names."""
    return SegmentGraph(model.eval()).run(feeds)


def export_segment(model: HRM, path: str | Path, opset: int = MIN_OPSET,
                   external_data: bool | None = None) -> Path:
    """Export one unrolled segment of `model` to `path`. Not checked here: `check_segment_graph` validates it
    (the export does, once, and records what it returns).

    external_data: None decides by size (weights above 1 GiB go to `<name>.data` beside the graph); True or
    False forces it. ONNX Runtime finds the side file by itself when loading by path.
    """
    if opset < MIN_OPSET:
        raise ConfigurationError(f"opset: {opset} is below the minimum {MIN_OPSET}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    feeds = example_feeds(cfg, batch_size=2)  # batch 2, so no size-1 broadcast can be baked in
    args = tuple(torch.from_numpy(a) for a in as_feeds(feeds).values())
    with warnings.catch_warnings():
        # The TorchScript exporter (dynamo=False) is deprecated but unrolls Python loops by plain tracing, in
        # about a second, where the dynamo exporter takes ten times longer for the same graph. Its only tracer
        # warning here is about a feature width read from a shape, which is fixed by the config anyway.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        with torch.no_grad():  # the graph is inference only: trace the forward as served (HRM.forward)
            torch.onnx.export(SegmentGraph(model.eval()), args, str(path), dynamo=False, opset_version=opset,
                              input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                              dynamic_axes={name: {0: BATCH_AXIS} for name in INPUT_NAMES + OUTPUT_NAMES},
                              do_constant_folding=True)
    proto = onnx.load(str(path))
    _read_weights_directly(proto.graph)
    _declare_output_shapes(proto.graph, cfg)
    onnx.helper.set_model_props(proto, {"dualhrq.n_cycles": str(cfg.n_cycles), "dualhrq.t_steps": str(cfg.t_steps),
                                        "dualhrq.graph": "hrm_segment"})
    save_graph(proto, path, external_data)
    log.info("exported %s: %d nodes, opset %d, N=%d T=%d", path, len(proto.graph.node), opset, cfg.n_cycles,
             cfg.t_steps)
    return path


def _read_weights_directly(graph: onnx.GraphProto) -> None:
    """Point every reader of a weight at the initializer itself.

    The TorchScript exporter reads a weight that several unrolled steps share through Identity nodes. ONNX
    Runtime's quantizer only quantizes a MatMul whose weight input is an initializer, so without this the
    int8 variant would leave most of the model in float.
    """
    initializers = {t.name for t in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    alias = {n.output[0]: n.input[0] for n in graph.node
             if n.op_type == "Identity" and n.input[0] in initializers and n.output[0] not in graph_outputs}
    kept = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for node in kept:
        for i, name in enumerate(node.input):
            node.input[i] = alias.get(name, name)
    del graph.node[:]
    graph.node.extend(kept)


def output_shapes(cfg: ModelConfig) -> dict[str, tuple[int | str, ...]]:
    """Every output's shape, batch axis first."""
    b = BATCH_AXIS
    return {"policy_logits": (b, len(ACTIONS)), "quantity": (b,), "value": (b,), "q_logits": (b, 2),
            "forecast_coarse": (b,), "forecast_fine": (b,), "regime_probs": (b, cfg.num_regimes),
            "z_H_out": (b, cfg.coarse_len, cfg.h_module.hidden_dim),
            "z_L_out": (b, cfg.fine_len, cfg.l_module.hidden_dim)}


def _declare_output_shapes(graph: onnx.GraphProto, cfg: ModelConfig) -> None:
    """Write the outputs' shapes from the config: the tracer leaves some as made-up symbols
    ('Mulz_L_out_dim_2'), and the manifest, the runtime and TensorRT want concrete ones."""
    shapes = output_shapes(cfg)
    for value in graph.output:
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for size in shapes[value.name]:
            dim = dims.add()
            if isinstance(size, str):
                dim.dim_param = size
            else:
                dim.dim_value = size


def save_graph(proto: onnx.ModelProto, path: str | Path, external_data: bool | None = None) -> Path:
    """Save a graph in one file, or with its weights in `<name>.data` when asked or when too big for one."""
    path = Path(path)
    side_file = path.with_name(path.name + ".data")
    side_file.unlink(missing_ok=True)  # onnx appends to an existing side file: never reuse a stale one
    if external_data is None:
        external_data = sum(len(t.raw_data) for t in proto.graph.initializer) > EXTERNAL_DATA_ABOVE_BYTES
    onnx.save(proto, str(path), save_as_external_data=external_data, all_tensors_to_one_file=True,
              location=side_file.name, size_threshold=1024)
    return path


def graph_files(path: str | Path) -> list[Path]:
    """The graph file and its external-data side file when it has one."""
    path = Path(path)
    side_file = path.with_name(path.name + ".data")
    return [path, side_file] if side_file.is_file() else [path]


@dataclass(frozen=True)
class GraphCheck:
    """What check_segment_graph found in a valid graph (the manifest's GraphSummary is made from it)."""

    node_count: int
    op_counts: dict[str, int]
    opset: int
    inputs: list[dict[str, Any]]  # [{name, dtype, shape}], shape entries int or "batch"
    outputs: list[dict[str, Any]]


def check_segment_graph(path: str | Path) -> GraphCheck:
    """Validate an exported segment graph: ONNX checker, the contract's names, opset, no control flow.

    Raises ModelLoadError naming what is wrong.
    """
    path = Path(path)
    try:
        onnx.checker.check_model(str(path))  # by path, so graphs with external data are checked too
        proto = onnx.load(str(path), load_external_data=False)
    except (onnx.checker.ValidationError, OSError) as e:
        raise ModelLoadError(f"{path}: not a valid ONNX graph: {e}") from None
    control_flow = sorted({op for op in _all_op_types(proto) if op in CONTROL_FLOW_OPS})
    if control_flow:
        raise ModelLoadError(f"{path}: control-flow nodes {control_flow} in the segment graph; it must be unrolled")
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < MIN_OPSET:
        raise ModelLoadError(f"{path}: opset {opset} is below the minimum {MIN_OPSET}")
    inputs = [_value_signature(v) for v in proto.graph.input]
    outputs = [_value_signature(v) for v in proto.graph.output]
    names_in, names_out = tuple(v["name"] for v in inputs), tuple(v["name"] for v in outputs)
    if names_in != INPUT_NAMES or names_out != OUTPUT_NAMES:
        raise ModelLoadError(f"{path}: graph inputs {names_in} / outputs {names_out} differ from the segment "
                             f"contract {INPUT_NAMES} / {OUTPUT_NAMES}")
    op_counts: dict[str, int] = {}
    for node in proto.graph.node:
        op_counts[node.op_type] = op_counts.get(node.op_type, 0) + 1
    return GraphCheck(len(proto.graph.node), op_counts, opset, inputs, outputs)


@dataclass(frozen=True)
class OptimizedCounts:
    """The graph as ONNX Runtime runs it on this CPU: node counts before and after its graph optimisations."""

    exported: int
    optimized: int
    op_counts: dict[str, int]  # after optimisation
    fused: dict[str, int]  # op types ORT's fusions introduced (absent from the exported graph), with counts


def ort_optimized_counts(path: str | Path, threads: int = 1) -> OptimizedCounts:
    """Load `path` with the serving settings, let ONNX Runtime write the graph it optimised, and count it.

    Which fusions fired (normalisation, GELU/SiLU, matmul + scale, quantised matmuls) is read from the op
    types that appear only after optimisation: nothing here assumes which ones ORT applies."""
    import tempfile

    import onnxruntime as ort

    from dualhrq.contract import ort_session_options

    exported = Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort_session_options(threads)
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.data")
        opts.log_severity_level = 3  # it warns that the written graph is specific to this machine: it is only counted
        ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        after = Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath, load_external_data=False).graph.node)
    return OptimizedCounts(sum(exported.values()), sum(after.values()), dict(after.most_common()),
                           {op: c for op, c in after.most_common() if op not in exported})


def _all_op_types(proto: onnx.ModelProto) -> list[str]:
    """Op types of every node, including nodes in subgraphs and local functions (control flow hides there)."""
    ops: list[str] = []

    def walk(nodes: Any) -> None:
        for node in nodes:
            ops.append(node.op_type)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g.node)
                for g in attr.graphs:
                    walk(g.node)

    walk(proto.graph.node)
    for fn in proto.functions:
        walk(fn.node)
    return ops


def _value_signature(value: onnx.ValueInfoProto) -> dict[str, Any]:
    t = value.type.tensor_type
    shape: list[int | str] = [d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim]
    return {"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": shape}
