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


def activation_matmuls(proto: onnx.ModelProto) -> list[str]:
    """Names of the MatMul nodes whose second input is not a weight: attention's QK^T and AV.

    Those multiply two activations; dynamic quantisation of them would quantise attention scores and values
    per call with one scale each, which is where int8 attention loses most accuracy. Only weights are
    quantised.
    """
    weights = {t.name for t in proto.graph.initializer}
    return [n.name for n in proto.graph.node if n.op_type == "MatMul" and n.input[1] not in weights]


def to_int8(src: str | Path, dst: str | Path) -> Path:
    """Dynamic int8 quantisation of the MatMul weights, for the CPU provider.

    Weights are quantised once here, activations on the fly per call; Gemm (the small heads) and every
    activation-by-activation MatMul stay fp32. Unsigned 8-bit weights (U8U8): on x86 CPUs without VNNI
    (this machine: AVX2 only) ONNX Runtime's kernels for the default signed weights (U8S8) can saturate;
    on the tiny model with real inputs that took the fine forecast's correlation with fp32 to 0.85, against
    0.999 with U8U8, which cannot saturate and keeps all 8 bits (reduce_range would keep 7).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    excluded = activation_matmuls(onnx.load(str(src), load_external_data=False))  # node names suffice
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a line per tensor on the root logger
    try:
        quantize_dynamic(src, dst, op_types_to_quantize=["MatMul"], nodes_to_exclude=excluded,
                         weight_type=QuantType.QUInt8, extra_options={"MatMulConstBOnly": True})
    finally:
        root.setLevel(level)
    log.info("int8: quantised MatMul weights; %d attention MatMuls left in fp32", len(excluded))
    return dst
