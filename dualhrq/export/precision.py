"""Lower-precision variants of the fp32 segment graph: fp16 (weights and compute) and dynamic int8 (CPU).

Both keep the graph's fp32 inputs and outputs, so the runtime feeds every variant the same arrays. Whether a
variant is good enough is not decided here: dualhrq.export.parity measures it against PyTorch fp32.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

from dualhrq.export.segment import save_graph

log = logging.getLogger(__name__)

# Recorded beside the fp16 parity figures, which are measured on the CPU (see to_fp16).
FP16_CPU_NOTE = ("measured on ONNX Runtime's CPU provider, which runs most fp16 MatMuls and normalisations in fp32 "
                 "behind inserted casts: the figures mostly reflect fp16 weights, a GPU computes in fp16 throughout")


def to_fp16(src: str | Path, dst: str | Path, external_data: bool | None = None) -> Path:
    """fp16 weights and compute with fp32 inputs and outputs (casts at the graph's edges).

    ONNX Runtime's CPU provider lacks fp16 kernels for some ops and runs those in fp32 behind inserted casts,
    so a CPU parity check of this graph is a check of fp16 weights plus whatever fp16 compute the CPU has; a
    GPU runs it in fp16 throughout.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # Constants beyond fp16's range are clamped to +-1e4 by the converter (max_finite_val): the attention
    # pooling's -1e9 mask offset becomes -1e4, which still zeroes a masked neighbour's softmax weight.
    proto = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    return save_graph(proto, dst, external_data)


def mlp_weight_matmuls(proto: onnx.ModelProto) -> list[str]:
    """Names of the weight MatMuls inside the H and L blocks' SwiGLU MLPs: the ones int8 quantises.

    The MLPs hold most of the blocks' weights (gate_up and down against qkv and out), so they carry most of
    the size and speed gain. Measured on the tiny model's real-data parity inputs (AVX2 CPU, U8U8 weights):
    quantising the MLPs alone kept forecast correlation with fp32 at 0.99986/0.99996; adding the attention
    projections dropped it to 0.99785 and every weight MatMul to 0.99723, both under the 0.999 bound. The
    input network, conditioning, cross-level projections and heads are small and stay fp32.
    """
    weights = {t.name for t in proto.graph.initializer}
    return [n.name for n in proto.graph.node
            if n.op_type == "MatMul" and n.input[1] in weights and "_module/" in n.name and "/mlp/" in n.name]


def to_int8(src: str | Path, dst: str | Path) -> Path:
    """Dynamic int8 quantisation of the blocks' MLP weights (see mlp_weight_matmuls), for the CPU provider.

    Weights are quantised once here, activations on the fly per call; everything else stays fp32, and no
    activation-by-activation MatMul is ever quantised. Unsigned 8-bit weights (U8U8): on x86 CPUs without
    VNNI (this machine: AVX2 only) ONNX Runtime's kernels for the signed weights (U8S8) can saturate; on the
    tiny model with real inputs signed weights lost 5x more accuracy (max error 0.29 against 0.014).
    Per-channel scales are not used: ONNX Runtime 1.2x cannot load per-channel dynamic MatMuls of this graph.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    nodes = mlp_weight_matmuls(onnx.load(str(src), load_external_data=False))  # node names suffice
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a line per tensor on the root logger
    try:
        quantize_dynamic(src, dst, op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes,
                         weight_type=QuantType.QUInt8, extra_options={"MatMulConstBOnly": True})
    finally:
        root.setLevel(level)
    log.info("int8: quantised %d MLP weight MatMuls; attention, heads and conditioning stay fp32", len(nodes))
    return dst
