"""Lower-precision variants of the fp32 segment graph: fp16 (weights and compute) and dynamic int8 (CPU).

Both keep the graph's fp32 inputs and outputs, so the runtime feeds every variant the same arrays. Whether a
variant is good enough is not decided here: dualhrq.export.parity measures it against PyTorch fp32.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import onnx

from dualhrq.errors import ConfigurationError
from dualhrq.export.segment import save_graph

log = logging.getLogger(__name__)

# Recorded beside the fp16 parity figures, which are measured on the CPU (see to_fp16).
FP16_CPU_NOTE = ("measured on ONNX Runtime's CPU provider, which runs most fp16 MatMuls and normalisations in fp32 "
                 "behind inserted casts: the figures mostly reflect fp16 weights, a GPU computes in fp16 throughout")


def norm_nodes(proto: onnx.ModelProto) -> list[str]:
    """Names of the nodes of every RMSNorm (the `norm1`/`norm2` scopes of the blocks): squares of activations
    and their mean, which overflow fp16 (65504) as soon as an activation passes ~256."""
    return [n.name for n in proto.graph.node if "/norm1/" in n.name or "/norm2/" in n.name]


def to_fp16(src: str | Path, dst: str | Path, external_data: bool | None = None) -> Path:
    """fp16 weights and compute with fp32 inputs and outputs (casts at the graph's edges), normalisation in fp32.

    Every RMSNorm stays fp32 behind casts (see norm_nodes); ONNX Runtime still fuses it, and a GPU runs the
    rest in fp16. The graph holds no constant beyond fp16's range: the pattern mask replaces scores with a
    finite value (dualhrq.model.conditioning.MASKED_SCORE), and the converter's clamp (max_finite_val) is a
    backstop, not a step the graph relies on. ONNX Runtime's CPU provider lacks fp16 kernels for some ops and
    runs those in fp32 behind inserted casts, so a CPU parity check of this graph is a check of fp16 weights
    plus whatever fp16 compute the CPU has.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = onnx.load(str(src))
    kept = norm_nodes(proto)
    converter_log = logging.getLogger("onnxruntime.transformers.float16")
    level = converter_log.level
    converter_log.setLevel(logging.WARNING)  # it logs each norm weight shared by fp32 and fp16 readers, at INFO
    try:
        proto = convert_float_to_float16(proto, keep_io_types=True, node_block_list=kept)
    finally:
        converter_log.setLevel(level)
    _merge_duplicate_casts(proto.graph)
    _drop_fp16_round_trips(proto.graph, kept)
    return save_graph(proto, dst, external_data)


def _merge_duplicate_casts(graph: onnx.GraphProto) -> None:
    """Keep one of each Cast that the converter wrote more than once under one name.

    ONNX Runtime's converter before 1.32 adds a Cast (and its value_info) for every kept node that reads an fp16
    value, all named after that value: a value read by two kept nodes (a norm's input feeds its square and its
    scaling) gives two nodes of one name writing one output, which ONNX Runtime refuses to load. Such copies
    are the same cast, so one serves every reader."""
    seen: set[bytes] = set()
    nodes = []
    for node in graph.node:
        key = node.SerializeToString()  # name, inputs, outputs and the target type
        if node.op_type == "Cast" and key in seen:
            continue
        seen.add(key)
        nodes.append(node)
    if len(nodes) == len(graph.node):
        return
    del graph.node[:]
    graph.node.extend(nodes)
    infos, named = [], set()
    for info in graph.value_info:
        if info.name not in named:
            named.add(info.name)
            infos.append(info)
    del graph.value_info[:]
    graph.value_info.extend(infos)


def _drop_fp16_round_trips(graph: onnx.GraphProto, fp32_nodes: list[str]) -> None:
    """Rewire fp32 -> fp16 -> fp32 cast pairs between nodes kept in fp32 to the fp32 value itself.

    The converter casts every kept node's output to fp16 and back for the next kept node, so a norm's squared
    activations would pass through fp16 (and overflow) although both ends are fp32."""
    kept = set(fp32_nodes)
    fp32_values = {out for n in graph.node if n.name in kept for out in n.output}
    producer = {out: n for n in graph.node for out in n.output}

    def cast_to(node: onnx.NodeProto) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    rename = {}
    for node in graph.node:
        first = producer.get(node.input[0]) if node.input else None
        if (cast_to(node) == onnx.TensorProto.FLOAT and first is not None
                and cast_to(first) == onnx.TensorProto.FLOAT16 and first.input[0] in fp32_values):
            rename[node.output[0]] = first.input[0]
    graph_outputs = {o.name for o in graph.output}
    nodes = [n for n in graph.node if not (n.output and n.output[0] in rename and n.output[0] not in graph_outputs)]
    for node in nodes:
        for i, name in enumerate(node.input):
            node.input[i] = rename.get(name, name)
    used = {name for n in nodes for name in n.input} | graph_outputs
    nodes = [n for n in nodes if cast_to(n) is None or any(out in used for out in n.output)]
    del graph.node[:]
    graph.node.extend(nodes)


SCOPE_NAMES = {"all": "", "fine": ", block weights but the coarse module's attention", "mlp": ", MLP weights only"}


@dataclass(frozen=True)
class Int8Scheme:
    """How the weights are quantised: ONNX Runtime's dynamic int8 (activations quantised per call)."""

    weights: str  # "u8" or "s8"
    reduce_range: bool  # 7-bit weights: AVX2's u8 x s8 kernel adds pairs of products in 16 bits and saturates
    per_channel: bool  # one scale per output column of each weight
    scope: str = "all"  # which weight MatMuls: a key of SCOPE_NAMES (see weight_matmuls)

    @property
    def name(self) -> str:
        return (f"{self.weights}{' reduce_range' if self.reduce_range else ''}"
                f"{' per-channel' if self.per_channel else ' per-tensor'}"
                f"{SCOPE_NAMES[self.scope]}")


def int8_schemes(vnni: bool) -> list[Int8Scheme]:
    """The schemes to try for a CPU, best first; the export keeps the first that holds parity.

    With VNNI (AVX512-VNNI, AVX-VNNI, AMX) u8 x s8 products accumulate in 32 bits, so signed weights at full
    range are both fastest and exact enough. Without it (AVX2 only) the u8 x s8 kernel (vpmaddubsw) saturates
    its 16-bit pair sums at full range (on the tiny model 10x the error); signed weights at 7 bits
    (reduce_range) keep that fast kernel without saturating, unsigned weights (u8 x u8) take a slower widening
    kernel. Measured on the 27M model, one segment at batch 1 on a loaded 2-core AVX2 EPYC, interleaved: fp32
    133 ms, every weight s8 reduce_range 75 ms, u8 90 ms, MLP weights only (u8) 102 ms. Last comes the MLP
    weights alone: on that model trained 40 steps, quantising every weight MatMul dropped the value's
    correlation with fp32 to 0.997 under either scheme. Between the two comes every block weight but the coarse
    (H) module's attention: the H module's readout feeds the coarse forecast and the value, the two outputs that
    missed first when every weight was quantised (on a VNNI EPYC: correlations 0.9986-0.9990 over three
    segments), while the fine module's attention is a fifth of the segment's FLOPs.
    """
    if vnni:
        return [Int8Scheme("s8", False, True), Int8Scheme("u8", False, True),
                Int8Scheme("s8", False, True, "fine"), Int8Scheme("s8", False, True, "mlp")]
    return [Int8Scheme("s8", True, True), Int8Scheme("u8", False, True),
            Int8Scheme("s8", True, True, "fine"), Int8Scheme("s8", True, True, "mlp")]


def weight_matmuls(proto: onnx.ModelProto, scope: str = "all") -> list[str]:
    """Names of every MatMul whose second input is a 2-D weight: the ones int8 quantises. Scope "all": all of
    them; "fine": those inside the H and L blocks but the H (coarse) module's attention; "mlp": only those
    inside the H and L blocks' SwiGLU MLPs.

    That is every projection of the model: attention (qkv, out), the MLPs, the cross-level projections, the
    input network and the conditioning. Activation-by-activation products (attention's QK^T and AV) have no
    weight and stay fp32, as do the Gemm heads (a handful of rows) and the pattern query (a weight vector,
    which per-channel quantisation cannot take).
    """
    if scope not in SCOPE_NAMES:
        raise ConfigurationError(f"int8 scope: {scope!r} is not one of {', '.join(map(repr, SCOPE_NAMES))}")
    rank = {t.name: len(t.dims) for t in proto.graph.initializer}
    return [n.name for n in proto.graph.node if n.op_type == "MatMul" and rank.get(n.input[1]) == 2
            and _in_scope(n.name, scope)]


def _in_scope(node: str, scope: str) -> bool:
    block = "_module/" in node
    match scope:
        case "all":
            return True
        case "fine":
            return block and ("/mlp/" in node or "/l_module/" in node)
        case _:  # "mlp" (weight_matmuls refuses any other scope)
            return block and "/mlp/" in node


def to_int8(src: str | Path, dst: str | Path, scheme: Int8Scheme) -> Path:
    """Dynamic int8 quantisation of every weight MatMul (see weight_matmuls) under `scheme`, for the CPU
    provider. Weights are quantised once here, activations on the fly per call."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    nodes = weight_matmuls(onnx.load(str(src), load_external_data=False), scheme.scope)  # node names suffice
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a line per tensor on the root logger
    try:
        quantize_dynamic(src, dst, op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes,
                         per_channel=scheme.per_channel, reduce_range=scheme.reduce_range,
                         weight_type=QuantType.QUInt8 if scheme.weights == "u8" else QuantType.QInt8,
                         extra_options={"MatMulConstBOnly": True})
    finally:
        root.setLevel(level)
    log.info("int8 (%s): quantised %d weight MatMuls; activation products and heads stay fp32", scheme.name,
             len(nodes))
    return dst
