"""The ACT halting rule, torch-free: serving (dualhrq.runtime.act), PyTorch inference and training
(dualhrq.train.act) all decide with it, on numpy arrays and torch tensors alike."""

from __future__ import annotations

from typing import Any

from dualhrq.config import ActConfig


def halts(q_logits: Any, segments: Any, minimum: Any, limit: int) -> tuple[Any, Any]:
    """(stop, by_q), each [B] bool, after a row's `segments`-th segment (an int, or one count per row).

    by_q: q_halt > q_continue with at least `minimum` segments run (an int, or one per row); stop: by_q, or
    `limit` segments reached. Works on numpy arrays and torch tensors alike: one rule for serving and training.
    """
    by_q = (q_logits[:, 0] > q_logits[:, 1]) & (segments >= minimum)
    return by_q | (segments >= limit), by_q


def inference_bounds(act: ActConfig) -> tuple[int, int]:
    """(minimum, limit) for `halts` at inference: act.min_segments to act.max_segments, or exactly
    act.fixed_segments, where a minimum above the limit keeps Q from ever halting a row (reported as "max")."""
    if act.fixed_segments:
        return act.fixed_segments + 1, act.fixed_segments
    return act.min_segments, act.max_segments
