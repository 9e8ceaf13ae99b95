"""ACT at serve time: run segments on a batch until each row halts, feeding the carry back in.

A row halts once q_halt > q_continue after `act.min_segments`, or at `act.max_segments`; with
`act.fixed_segments > 0` every row runs exactly that many (predictable latency). Halted rows leave the
batch, so later segments run only on the rows still thinking. Runs on the inference thread only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dualhrq.config import ActConfig
from dualhrq.runtime.engine import Engine

CARRY = (("z_H", "z_H_out"), ("z_L", "z_L_out"))
HEADS = ("policy_logits", "quantity", "value", "q_logits", "forecast_coarse", "forecast_fine", "regime_probs")


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
    feeds = dict(inputs)
    feeds["z_H"], feeds["z_L"] = carry
    limit = act.fixed_segments or act.max_segments
    for seg in range(1, limit + 1):
        out = engine.run(feeds)
        if act.fixed_segments:
            by_q = np.zeros(len(rows), dtype=bool)
            stop = np.full(len(rows), seg == limit)
        else:
            q = out["q_logits"]
            by_q = (q[:, 0] > q[:, 1]) & (seg >= act.min_segments)
            stop = by_q | (seg == limit)
        if not final:
            final = {k: np.empty((b, *out[k].shape[1:]), dtype=out[k].dtype) for k in HEADS}
        done = rows[stop]
        for k in HEADS:
            final[k][done] = out[k][stop]
        segments[done] = seg
        halted_by_q[done] = by_q[stop]
        if stop.all():
            break
        for name_in, name_out in CARRY:  # the engine keeps these buffers intact for one more call
            feeds[name_in] = out[name_out]
        if stop.any():
            go = ~stop
            rows = rows[go]
            feeds = {k: v[go] for k, v in feeds.items()}
    return ActResult(final, segments, halted_by_q)
