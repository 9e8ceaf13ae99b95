"""The segment graph's contract, in the one place that export (which writes graphs) and the runtime (which
runs them) both import: input and output names in graph order, their dtypes, the carry, feeds converted to
what the graph takes, and ONNX Runtime sessions with the serving settings.

Free of torch on purpose: the serving runtime imports this and must start without PyTorch. ONNX Runtime is
imported only when a session is made, so a TensorRT-only or torch-only process never loads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dualhrq.config import ModelConfig
from dualhrq.cpu import usable_cores
from dualhrq.errors import ConfigurationError, InferenceError, ModelLoadError

if TYPE_CHECKING:
    import onnxruntime as ort

INPUT_NAMES: tuple[str, ...] = ("h_tokens", "l_tokens", "instrument_id", "timeframe_id", "regime_features",
                                "pattern_context", "pattern_mask", "z_H", "z_L")
OUTPUT_NAMES: tuple[str, ...] = ("policy_logits", "quantity", "value", "q_logits", "forecast_coarse",
                                 "forecast_fine", "regime_probs", "z_H_out", "z_L_out")
INT_INPUTS: tuple[str, ...] = ("instrument_id", "timeframe_id")
# (input, output) pairs of the recurrent state: a segment's output feeds the same-named input of the next.
CARRY: tuple[tuple[str, str], ...] = (("z_H", "z_H_out"), ("z_L", "z_L_out"))
HEADS: tuple[str, ...] = tuple(name for name in OUTPUT_NAMES if name not in dict(CARRY).values())
BATCH_AXIS = "batch"

_DTYPES = {name: np.dtype(np.int64 if name in INT_INPUTS else np.float32) for name in INPUT_NAMES}

PROVIDERS: dict[str, list[str]] = {
    "onnx-cpu": ["CPUExecutionProvider"],
    "onnx-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "onnx-tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


# ONNX Runtime is an install extra, cpu or gpu and never both: the two packages install the same module.
ORT_MISSING = ("ONNX Runtime is not installed; install dualhrq with one of its runtimes: pip install 'dualhrq[cpu]' "
               "(CPU) or 'dualhrq[gpu]' (GPU, see the README)")


def require_onnxruntime() -> None:
    """Raise ConfigurationError naming the install command when ONNX Runtime is absent: for commands that
    would otherwise work for minutes before they first need it."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        raise ConfigurationError(ORT_MISSING)


def zero_carry(cfg: ModelConfig, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(z_H, z_L) float32 zeros: the carry a request's first segment starts from (as HRM.initial_carry)."""
    return (np.zeros((batch_size, cfg.coarse_len, cfg.h_module.hidden_dim), np.float32),
            np.zeros((batch_size, cfg.fine_len, cfg.l_module.hidden_dim), np.float32))


def next_carry(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The carry inputs of the next segment, from this segment's outputs."""
    return {name_in: outputs[name_out] for name_in, name_out in CARRY}


def as_feeds(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The graph's inputs in graph order as contiguous arrays of its dtypes (int64 ids, float32 the rest);
    arrays already right pass through without a copy."""
    missing = [name for name in INPUT_NAMES if name not in feeds]
    if missing:
        raise InferenceError(f"feeds: missing graph inputs {missing}")
    return {name: np.ascontiguousarray(feeds[name], dtype) for name, dtype in _DTYPES.items()}


def ort_session_options(threads: int = 0, spinning: bool = False) -> ort.SessionOptions:
    """The serving settings for any CPU session: every graph optimisation, sequential execution, `threads`
    intra-op threads (0: usable_cores()) and one inter-op thread.

    spinning: idle intra-op threads busy-wait between the nodes of a run instead of sleeping; they stop when
    the run ends (force_spinning_stop), so between runs they leave the cores to other processes. Worth it
    only when the engine owns its cores: on shared ones a spinning worker takes a core the rest of the
    machine needs (`dualhrq bench engine` measures both ways)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads or usable_cores()
    opts.inter_op_num_threads = 1  # sequential execution: a second pool would only add wake-ups
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts


def ort_session(path: str | Path, threads: int = 0, spinning: bool = False, backend: str = "onnx-cpu",
                provider_options: dict[str, dict[str, str]] | None = None) -> ort.InferenceSession:
    """A session on the segment graph at `path` with the serving settings (ort_session_options).

    Loading by path lets ONNX Runtime find an external-data side file next to the graph. provider_options:
    options per provider name (what the GPU engines set: CUDA graphs, TensorRT's precision, cache and
    profiles). Raises
    ConfigurationError for a backend this install cannot run, ModelLoadError for a graph that is missing,
    malformed or not the segment graph.
    """
    import onnxruntime as ort

    if backend not in PROVIDERS:
        raise ConfigurationError(f"serve.backend: {backend!r} is not an ONNX Runtime backend "
                                 f"({', '.join(PROVIDERS)})")
    wanted = PROVIDERS[backend]
    available = ort.get_available_providers()
    if wanted[0] not in available:
        raise ConfigurationError(f"serve.backend: {backend} needs ONNX Runtime's {wanted[0]}, which this "
                                 f"install lacks (available: {', '.join(available)}); install onnxruntime-gpu "
                                 "on a CUDA machine or use onnx-cpu")
    opts = ort_session_options(threads, spinning)
    try:
        providers = [(p, provider_options.get(p, {})) for p in wanted] if provider_options else wanted
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as e:  # ORT raises its own untyped errors for missing or malformed graphs
        raise ModelLoadError(f"ONNX Runtime cannot load {path}: {e}") from None
    names_in = tuple(i.name for i in session.get_inputs())
    names_out = tuple(o.name for o in session.get_outputs())
    if set(names_in) != set(INPUT_NAMES) or set(names_out) != set(OUTPUT_NAMES):
        raise ModelLoadError(f"{path}: graph inputs {names_in} / outputs {names_out} are not the segment "
                             f"graph's {INPUT_NAMES} / {OUTPUT_NAMES}")
    return session


def run_session(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One segment through ONNX Runtime: graph inputs in, every graph output by name out."""
    arrays = as_feeds(feeds)
    try:
        return dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), arrays)))
    except Exception as e:
        raise InferenceError(f"ONNX Runtime failed on the segment graph: {e}") from None
