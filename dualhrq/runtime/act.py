"""ACT at serve time: run segments on a batch until each row halts, feeding the carry back in.

The halting rule (dualhrq.model.halting.halts) is defined once, for numpy arrays and torch tensors alike: this
loop, the PyTorch inference loop and the training loop (dualhrq.train.act) all decide with it. A row halts once
q_halt > q_continue after a minimum count of segments, or at a maximum count; with `act.fixed_segments > 0`
every row runs exactly that many (predictable latency). Halted rows leave the batch, so later segments run
only on the rows still thinking. One thread runs a host's engine at a time: the batcher's, or the event loop's
for a request alone in flight while the engine is idle (`Batcher.try_run`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dualhrq.config import ActConfig
from dualhrq.contract import HEADS
from dualhrq.model.halting import halts, inference_bounds

if TYPE_CHECKING:
    from dualhrq.export.engines import Engine


@dataclass
class ActResult:
    outputs: dict[str, np.ndarray]  # HEADS, per row as of the segment it halted on (owned copies)
    segments: np.ndarray  # [B] int: segments run per row
    halted_by_q: np.ndarray  # [B] bool: True "q", False "max" (a fixed count is reported as "max")


def run_act(engine: Engine, inputs: dict[str, np.ndarray], carry: tuple[np.ndarray, np.ndarray],
            act: ActConfig) -> ActResult:
    """inputs: the non-carry graph inputs for B rows; carry: (z_H, z_L) to start from."""
    b = len(inputs["h_tokens"])
    rows = np.arange(b)  # original row of each row still running
    segments = np.zeros(b, dtype=np.int64)
    halted_by_q = np.zeros(b, dtype=bool)
    final: dict[str, np.ndarray] = {}
    minimum, limit = inference_bounds(act)
    loop = engine.segments(inputs, carry)  # the carry stays where the engine computes
    for seg in range(1, limit + 1):
        stop, by_q = halts(loop.step(), seg, minimum, limit)
        if stop.any():
            heads = loop.heads(stop)
            if not final:
                final = {k: np.empty((b, *v.shape[1:]), dtype=v.dtype) for k, v in heads.items()}
            done = rows[stop]
            for k in HEADS:
                final[k][done] = heads[k]
            segments[done] = seg
            halted_by_q[done] = by_q[stop]
        if stop.all():
            break
        if stop.any():
            rows = rows[~stop]
            loop.keep(~stop)
    return ActResult(final, segments, halted_by_q)
