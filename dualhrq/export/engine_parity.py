"""Parity of any engine against the PyTorch fp32 model through the one Engine interface: one segment (`run`),
the carry over several segments and the halting decision each segment (the SegmentLoop that serving drives,
so a GPU engine is checked with its carry resident on the device, exactly as it serves).

The bounds are dualhrq.export.parity's (measure_parity); this module only adds the engine-side loop and the
halting agreement, the one figure an ACT loop adds to a single segment's. It is the one carry check: the export
holds every variant to it (an ONNX Runtime graph through the host loop, a TensorRT engine through its device
loop), and so does the GPU check of a bundle's engines.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dualhrq.contract import INPUT_NAMES
from dualhrq.export.engines import FEED_NAMES, Engine, as_outputs
from dualhrq.export.parity import Parity, measure_parity, rollout_references

if TYPE_CHECKING:
    from dualhrq.model import HRM


@dataclass(frozen=True)
class EngineParity:
    engine: str
    precision: str
    segment: Parity  # one segment from the feeds' carry, through Engine.run
    carry_segments: int
    carry_max_abs_err: list[float]  # per segment, over every output, the engine's own carry fed back
    carry_failures: tuple[str, ...]
    halting_agreement: list[float]  # per segment: share of rows whose q_halt > q_continue matches PyTorch's

    @property
    def failures(self) -> tuple[str, ...]:
        return self.segment.failures + self.carry_failures

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["segment"] = self.segment.to_dict()
        return {**d, "carry_failures": list(self.carry_failures), "failures": list(self.failures),
                "passed": self.passed}

    def carry_summary(self) -> str:
        return (f"carry over {self.carry_segments} segments ({self.segment.samples} windows): max|err| "
                f"{', '.join(f'{e:.2e}' for e in self.carry_max_abs_err)}, halting agreement "
                f"{', '.join(f'{a:.1%}' for a in self.halting_agreement)}")


def run_rows(engine: Engine, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One segment of every row of `feeds` (every graph input) through engine.run, in chunks of
    engine.max_batch rows; every output, as owned arrays."""
    n = len(feeds["h_tokens"])
    # Copied per chunk: an engine reuses its output buffers two calls later.
    ran = [{k: v.copy() for k, v in engine.run({k: feeds[k][c] for k in INPUT_NAMES}).items()}
           for c in _chunks(n, engine.max_batch)]
    return {k: np.concatenate([r[k] for r in ran]) for k in ran[0]}


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def engine_parity(model: HRM, engine: Engine, feeds: dict[str, np.ndarray], precision: str,
                  segments: int = 3, exact: bool | None = None,
                  references: list[dict[str, np.ndarray]] | None = None) -> EngineParity:
    """Hold `engine` to the bounds of `precision` (exact: as measure_parity) on `feeds` (every graph input,
    held-out windows), in chunks of engine.max_batch rows. ``references``: `torch_rollout` of the same feeds
    over at least `segments` segments, when already computed (several engines are held to one)."""
    references = rollout_references(model, feeds, segments, references)
    span = model.cfg.quantity_max - model.cfg.quantity_min
    one = measure_parity(references[0], run_rows(engine, feeds), precision, exact, quantity_span=span)

    # One chunk's loop at a time: loops of one batch size share the engine's buffers for that size.
    per_segment: list[list[dict[str, np.ndarray]]] = [[] for _ in range(segments)]
    for c in _chunks(len(feeds["h_tokens"]), engine.max_batch):
        loop = engine.segments({k: feeds[k][c] for k in FEED_NAMES},
                               (feeds["z_H"][c], feeds["z_L"][c]))
        rows = np.ones(c.stop - c.start, dtype=bool)
        for seg in range(segments):
            q = loop.step().copy()
            carry = loop.carry()
            per_segment[seg].append({**loop.heads(rows), "q_logits": q, **as_outputs(carry)})
    worst, agreement, failures = [], [], []
    for seg, (reference, parts) in enumerate(zip(references, per_segment), start=1):
        candidate = {k: np.concatenate([p[k] for p in parts]) for k in reference}
        parity = measure_parity(reference, candidate, precision, exact, quantity_span=span)  # halting included
        worst.append(max(parity.max_abs_err.values()))
        failures += [f"segment {seg}: {failure}" for failure in parity.failures]
        agreement.append(parity.halting_agreement)
    return EngineParity(engine.name, precision, one, segments, worst, tuple(failures), agreement)
