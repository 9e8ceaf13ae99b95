"""ONNX Runtime sessions for export-time checks and latency figures, with the serving settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from dualhrq.errors import InferenceError, ModelLoadError
from dualhrq.export.segment import INPUT_NAMES, INT_INPUTS, OUTPUT_NAMES


def ort_session(path: str | Path, threads: int = 2, spinning: bool = True) -> ort.InferenceSession:
    """A CPU session with every graph optimisation, `threads` intra-op threads and sequential execution.

    spinning: let idle pool threads busy-wait for the next call (lower latency for back-to-back calls; off
    when something else must get the cores between calls). Loading by path lets ONNX Runtime find an
    external-data side file next to the graph.
    """
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own untyped errors for missing or malformed graphs
        raise ModelLoadError(f"ONNX Runtime cannot load {path}: {e}") from None


def as_feeds(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The graph's inputs as contiguous arrays of its dtypes (int64 ids, float32 the rest)."""
    missing = [name for name in INPUT_NAMES if name not in feeds]
    if missing:
        raise ValueError(f"feeds: missing graph inputs {missing}")
    return {name: np.ascontiguousarray(feeds[name], dtype=np.int64 if name in INT_INPUTS else np.float32)
            for name in INPUT_NAMES}


def run_session(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One segment through ONNX Runtime: graph inputs in, every graph output by name out."""
    arrays = as_feeds(feeds)
    try:
        return dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), arrays)))
    except Exception as e:
        raise InferenceError(f"ONNX Runtime failed on the segment graph: {e}") from None
