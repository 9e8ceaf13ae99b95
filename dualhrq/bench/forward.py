"""Forward latency of the PyTorch model (eager, CPU): the baseline every engine is compared with."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from dualhrq.config import Config
from dualhrq.model import HRM, ModelInputs


@dataclass(frozen=True)
class LatencySummary:
    runs: int
    p50_ms: float
    p95_ms: float
    mean_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> LatencySummary:
        ms = np.asarray(seconds) * 1e3
        return cls(len(ms), float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), float(ms.mean()))


@torch.inference_mode()
def forward_latency(cfg: Config, batch_size: int = 1, runs: int = 30, warmup: int = 5,
                    threads: int | None = None) -> LatencySummary:
    """Time one segment (N x T as configured) of a freshly initialised model on synthetic inputs."""
    if threads:
        torch.set_num_threads(threads)
    model = HRM(cfg.model).eval()
    x = ModelInputs.random(cfg.model, batch_size)
    carry = model.initial_carry(batch_size)
    times = []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        model(x, carry)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return LatencySummary.of(times)
