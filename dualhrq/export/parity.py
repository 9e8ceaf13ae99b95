"""Parity of an exported graph against the PyTorch fp32 model: the figures, and the bounds that decide
whether an artifact ships.

fp32 must reproduce PyTorch (max absolute error <= 1e-4 on every output, the same action on every window).
Reduced precisions (fp16, int8, a TensorRT engine) are held, on the same held-out windows, to what a trading
signal needs: the same action on >= 99% of windows, forecasts and value that correlate >= 0.999 with
PyTorch, quantities within 2% of the quantity range, the same halting decision (the sign of q_halt -
q_continue, where fp32 is not at a tie) and the same most likely regime on >= 99%. The carry check
(dualhrq.export.engine_parity) repeats this over several segments, each side feeding back its own carry, for
every precision and engine: drift that compounds over an ACT loop shows up there.

Free of torch at import: the CLI reads the bounds while it builds its parser.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dualhrq.contract import OUTPUT_NAMES, next_carry
from dualhrq.errors import ConfigurationError, InferenceError

if TYPE_CHECKING:
    from dualhrq.model import HRM

FP32_MAX_ABS_ERR = 1e-4
MIN_FORECAST_CORR = 0.999
MIN_VALUE_CORR = 0.999
MIN_ACTION_AGREEMENT = 0.99
MIN_HALTING_AGREEMENT = 0.99
MIN_REGIME_AGREEMENT = 0.99
MAX_QUANTITY_ERR = 0.02  # of the quantity range (model.quantity_max - quantity_min)
# Halting is compared where fp32 decides: |q_halt - q_continue| >= this many logits. Below it fp32 itself is at
# a tie (an early Q-head sits near 0 everywhere) and any rounding flips the sign without meaning anything.
HALTING_TIE = 0.05
# Fewer held-out windows than this cannot show a 1% disagreement rate with any confidence.
MIN_PARITY_WINDOWS = 1000
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
    halting_agreement: float = float("nan")  # share of decided windows whose sign of q_halt - q_continue matches
    halting_decided: int = 0  # windows where fp32 is not at a tie (see HALTING_TIE)
    regime_agreement: float = float("nan")  # share whose most likely regime matches
    value_corr: float = float("nan")
    quantity_err: float = float("nan")  # max abs error as a share of the quantity range

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "failures": list(self.failures), "passed": self.passed}

    def summary(self) -> str:
        corr = "/".join(f"{self.forecast_corr[f]:.5f}" for f in FORECASTS)
        return (f"max|err| {max(self.max_abs_err.values()):.2e}, actions {self.action_agreement:.1%}, "
                f"forecast corr {corr}, value corr {self.value_corr:.5f}, quantity err {self.quantity_err:.2%}, "
                f"halting {self.halting_agreement:.1%} of {self.halting_decided} decided, regime {self.regime_agreement:.1%}")


def measure_parity(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], precision: str,
                   exact: bool | None = None, quantity_span: float = 1.0) -> Parity:
    """Compare a candidate's outputs with the reference's on the same feeds.

    exact: also hold the candidate to the fp32 bounds (default: only when precision is "fp32").
    quantity_span: model.quantity_max - model.quantity_min, the scale of the quantity bound.
    """
    exact = precision == "fp32" if exact is None else exact
    if not quantity_span > 0:
        raise ConfigurationError(f"quantity_span: must be > 0, got {quantity_span}")
    errors = {name: float(np.max(np.abs(candidate[name].astype(np.float64) - reference[name])))
              for name in OUTPUT_NAMES}
    agreement = _agreement(reference["policy_logits"].argmax(-1), candidate["policy_logits"].argmax(-1))
    margin = reference["q_logits"][:, 0].astype(np.float64) - reference["q_logits"][:, 1]
    decided = np.abs(margin) >= HALTING_TIE
    halting = (_agreement(np.sign(margin[decided]),
                          np.sign(candidate["q_logits"][decided, 0] - candidate["q_logits"][decided, 1]))
               if decided.any() else 1.0)
    regime = _agreement(reference["regime_probs"].argmax(-1), candidate["regime_probs"].argmax(-1))
    corr = {name: _correlation(reference[name], candidate[name]) for name in FORECASTS}
    value = _correlation(reference["value"], candidate["value"])
    quantity = errors["quantity"] / quantity_span
    failures = [f"{name}: non-finite values" for name in OUTPUT_NAMES if not np.isfinite(candidate[name]).all()]
    if exact:
        failures += [f"{name}: max abs error {err:.2e} > {FP32_MAX_ABS_ERR:.0e}"
                     for name, err in errors.items() if not err <= FP32_MAX_ABS_ERR]
        if agreement < 1.0:
            failures.append(f"actions: {agreement:.2%} agree with PyTorch; fp32 must agree on every sample")
    else:
        failures += [f"{name}: correlation {c:.5f} < {MIN_FORECAST_CORR}" + _undefined(c)
                     for name, c in corr.items() if not c >= MIN_FORECAST_CORR]
        if not value >= MIN_VALUE_CORR:
            failures.append(f"value: correlation {value:.5f} < {MIN_VALUE_CORR}" + _undefined(value))
        if not quantity <= MAX_QUANTITY_ERR:
            failures.append(f"quantity: max abs error {quantity:.2%} of the quantity range > {MAX_QUANTITY_ERR:.0%}")
        for what, share, bound in (("actions", agreement, MIN_ACTION_AGREEMENT),
                                   ("halting", halting, MIN_HALTING_AGREEMENT),
                                   ("regime argmax", regime, MIN_REGIME_AGREEMENT)):
            if not share >= bound:
                failures.append(f"{what}: {share:.2%} agree with fp32 < {bound:.0%}")
    samples = len(reference["policy_logits"])
    return Parity(precision, samples, errors, agreement, corr, tuple(failures), halting, int(decided.sum()), regime,
                  value, quantity)


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))


def _undefined(c: float) -> str:
    return " (constant output: undefined)" if np.isnan(c) else ""


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        if len(a) >= 2 and np.array_equal(a, b):
            return 1.0  # identical constant outputs (an untrained head): nothing to disagree on
        return float("nan")  # undefined; fails the bound rather than passing by accident
    return float(np.corrcoef(a, b)[0, 1])


def torch_rollout(model: HRM, feeds: dict[str, np.ndarray], segments: int) -> list[dict[str, np.ndarray]]:
    """PyTorch's outputs over `segments` segments, each fed its own carry: what every engine and precision is
    held to, so a caller checking several computes it once."""
    from dualhrq.export.segment import run_torch  # imports torch: only when a reference is computed

    if segments < 1:
        raise ConfigurationError(f"segments: must be >= 1, got {segments}")
    out, torch_feeds = [], dict(feeds)
    for _ in range(segments):
        out.append(run_torch(model, torch_feeds))
        torch_feeds.update(next_carry(out[-1]))
    return out


def rollout_references(model: HRM, feeds: dict[str, np.ndarray], segments: int,
                       references: list[dict[str, np.ndarray]] | None = None) -> list[dict[str, np.ndarray]]:
    """The first `segments` of `references` (`torch_rollout` of the same feeds, when a caller checking several
    engines computed it once), else PyTorch's rollout of `feeds` now."""
    if segments < 1:
        raise ConfigurationError(f"segments: must be >= 1, got {segments}")
    references = references or torch_rollout(model, feeds, segments)
    if len(references) < segments:
        raise ConfigurationError(f"references: {len(references)} segments for a check of {segments}")
    return references[:segments]
