"""Checkpoint -> bundle: the segment graph's contract shared with the runtime (contract: names, dtypes, feeds,
sessions), the unrolled ONNX segment (segment), its parity against PyTorch (parity, inputs), fp16/int8
variants (precision), a TensorRT engine (tensorrt_build), the hashed bundle the runtime loads (bundle:
load_bundle, verify_bundle) and the whole export (pipeline: export_bundle).
"""
