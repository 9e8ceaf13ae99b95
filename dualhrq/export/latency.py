"""Latency of one segment per engine of a bundle (PyTorch eager vs ONNX Runtime graphs), side by side.

Side by side means interleaved: every round times each engine once, in an order that rotates per round, so
load from other processes on a shared machine lands on all engines alike instead of on whichever ran last.
ONNX Runtime's pools do not spin between calls here: a spinning pool would keep the cores busy while the
next engine in the round runs, and charge its own latency to that engine.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from dualhrq.bench.forward import LatencySummary
from dualhrq.export.bundle import Bundle, load_bundle
from dualhrq.export.segment import example_feeds, run_torch
from dualhrq.export.session import as_feeds, ort_session
from dualhrq.model import HRM


def engine_latency_comparison(bundle: Bundle | str | Path, feeds: dict[str, np.ndarray] | None = None,
                              runs: int = 50, warmup: int = 5, threads: int = 2,
                              precisions: Sequence[str] | None = None) -> dict[str, LatencySummary]:
    """{"torch-eager": ..., "onnx-fp32": ..., "onnx-int8": ...} for one segment on `feeds` (default: synthetic
    batch 1; pass real windows for figures worth quoting). precisions: which of the bundle's graphs to time
    (default: all it has). Every engine gets `threads` intra-op threads."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    arrays = as_feeds(feeds if feeds is not None else example_feeds(b.config.model, 1))
    model = HRM(b.config.model)
    model.load_state_dict(b.state_dict())
    model.eval()
    engines: dict[str, Callable[[], object]] = {"torch-eager": lambda: run_torch(model, arrays)}
    for precision in precisions or b.precisions:
        session = ort_session(b.graph_path(precision), threads, spinning=False)
        engines[f"onnx-{precision}"] = lambda s=session: s.run(None, arrays)

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        names = list(engines)
        times: dict[str, list[float]] = {name: [] for name in names}
        for round_ in range(warmup + runs):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                t0 = time.perf_counter()
                engines[name]()
                if round_ >= warmup:
                    times[name].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(previous_threads)
    return {name: LatencySummary.of(t) for name, t in times.items()}
