"""Parity of an exported graph against the PyTorch fp32 model: the figures, and the bounds that decide
whether an artifact ships.

fp32 must reproduce PyTorch (max absolute error <= 1e-4 on every output, the same action on every sample).
Reduced precisions (fp16, int8, a TensorRT engine) are held to what a trading signal needs: forecasts that
correlate >= 0.999 with fp32 and the same action on >= 99% of samples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from dualhrq.contract import OUTPUT_NAMES, next_carry, run_session
from dualhrq.errors import ConfigurationError, InferenceError
from dualhrq.export.segment import run_torch
from dualhrq.model import HRM

FP32_MAX_ABS_ERR = 1e-4
MIN_FORECAST_CORR = 0.999
MIN_ACTION_AGREEMENT = 0.99
FORECASTS = ("forecast_coarse", "forecast_fine")


class ParityError(InferenceError):
    """An exported artifact missed its parity bound (and --force was not given)."""


@dataclass(frozen=True)
class Parity:
    precision: str
    samples: int
    max_abs_err: dict[str, float]  # per output, against PyTorch fp32
    action_agreement: float  # share of samples whose argmax action matches PyTorch's
    forecast_corr: dict[str, float]  # Pearson correlation per forecast output
    failures: tuple[str, ...]  # each missed bound, in words; empty when the artifact passes

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "failures": list(self.failures), "passed": self.passed}

    def summary(self) -> str:
        corr = "/".join(f"{self.forecast_corr[f]:.5f}" for f in FORECASTS)
        return (f"max|err| {max(self.max_abs_err.values()):.2e}, actions {self.action_agreement:.1%}, "
                f"forecast corr {corr}")


def measure_parity(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], precision: str,
                   exact: bool | None = None) -> Parity:
    """Compare a candidate's outputs with the reference's on the same feeds.

    exact: hold the candidate to the fp32 bounds (default: only when precision is "fp32").
    """
    exact = precision == "fp32" if exact is None else exact
    errors = {name: float(np.max(np.abs(candidate[name].astype(np.float64) - reference[name])))
              for name in OUTPUT_NAMES}
    agreement = float(np.mean(candidate["policy_logits"].argmax(-1) == reference["policy_logits"].argmax(-1)))
    corr = {name: _correlation(reference[name], candidate[name]) for name in FORECASTS}
    failures = [f"{name}: non-finite values" for name in OUTPUT_NAMES if not np.isfinite(candidate[name]).all()]
    if exact:
        failures += [f"{name}: max abs error {err:.2e} > {FP32_MAX_ABS_ERR:.0e}"
                     for name, err in errors.items() if not err <= FP32_MAX_ABS_ERR]
        if agreement < 1.0:
            failures.append(f"actions: {agreement:.2%} agree with PyTorch; fp32 must agree on every sample")
    else:
        failures += [f"{name}: correlation {c:.5f} < {MIN_FORECAST_CORR}"
                     + (" (constant output: undefined)" if np.isnan(c) else "")
                     for name, c in corr.items() if not c >= MIN_FORECAST_CORR]
        if agreement < MIN_ACTION_AGREEMENT:
            failures.append(f"actions: {agreement:.2%} agree with fp32 < {MIN_ACTION_AGREEMENT:.0%}")
    samples = len(reference["policy_logits"])
    return Parity(precision, samples, errors, agreement, corr, tuple(failures))


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")  # undefined; fails the bound rather than passing by accident
    return float(np.corrcoef(a, b)[0, 1])


@dataclass(frozen=True)
class CarryParity:
    segments: int
    samples: int
    max_abs_err: list[float]  # per segment, over every output
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "failures": list(self.failures), "passed": self.passed}


def carry_parity(model: HRM, session: ort.InferenceSession, feeds: dict[str, np.ndarray],
                 segments: int = 3) -> CarryParity:
    """Run `segments` segments through PyTorch and through the graph, each feeding back its OWN carry, and
    hold every segment to the fp32 bounds: drift that compounds over an ACT loop shows up here."""
    if segments < 1:
        raise ConfigurationError(f"segments: must be >= 1, got {segments}")
    torch_feeds, onnx_feeds = dict(feeds), dict(feeds)
    worst: list[float] = []
    failures: list[str] = []
    for segment in range(1, segments + 1):
        reference, candidate = run_torch(model, torch_feeds), run_session(session, onnx_feeds)
        parity = measure_parity(reference, candidate, "fp32")
        worst.append(max(parity.max_abs_err.values()))
        failures += [f"segment {segment}: {failure}" for failure in parity.failures]
        torch_feeds.update(next_carry(reference))
        onnx_feeds.update(next_carry(candidate))
    return CarryParity(segments, len(feeds["h_tokens"]), worst, tuple(failures))
