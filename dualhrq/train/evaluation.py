"""Held-out figures of a trained model that cannot hide a collapse.

A policy that always says HOLD scores the HOLD share as accuracy, and a policy that predicts the label
frequencies scores a respectable cross-entropy. So every evaluation reports the model's cross-entropy beside
two baselines fitted on the TRAINING labels: the label frequencies (an input-independent model) and the
label frequencies per position state (the label rule's state alone explains most of what is learnable),
with class-balanced scores, the predicted-action histogram and rank ICs with 95% intervals. A model within
0.01 of the frequency-only cross-entropy, or one that almost never predicts anything but HOLD, is flagged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dualhrq.config import ActConfig
from dualhrq.evaluate.metrics import ic_interval, information_coefficient
from dualhrq.model import ACTIONS, HRM
from dualhrq.model.decision import DecisionRule
from dualhrq.model.vocab import HOLD, position_from_probs
from dualhrq.train.act import act_inference
from dualhrq.train.batches import TrainingSet

log = logging.getLogger(__name__)

N_STATES = 3  # FLAT, LONG, SHORT (dualhrq.features)
COLLAPSE_CE_MARGIN = 0.01  # CE this close to frequency-only: the model ignores its input
COLLAPSE_MIN_NON_HOLD = 0.01  # fewer non-HOLD predictions than this: the policy is a constant


@dataclass(frozen=True)
class Interval:
    """A rank IC with its 95% interval (Fisher z, with Fieller's variance for Spearman's rho)."""

    value: float
    low: float
    high: float

    @classmethod
    def rank_ic(cls, x: np.ndarray, y: np.ndarray) -> Interval:
        rho = information_coefficient(x, y)
        return cls(rho, *ic_interval(rho, len(x)))

    def __str__(self) -> str:
        return f"{self.value:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


@dataclass(frozen=True)
class LabelBaselines:
    """Label frequencies of the training samples, overall and per position state (add-one smoothed)."""

    frequency: np.ndarray  # [5]
    by_state: np.ndarray  # [3, 5]

    @classmethod
    def fit(cls, actions: np.ndarray, states: np.ndarray) -> LabelBaselines:
        k = len(ACTIONS)
        freq = np.bincount(actions, minlength=k) + 1.0
        by_state = np.stack([np.bincount(actions[states == s], minlength=k) + 1.0 for s in range(N_STATES)])
        return cls(freq / freq.sum(), by_state / by_state.sum(axis=1, keepdims=True))

    def cross_entropies(self, actions: np.ndarray, states: np.ndarray) -> tuple[float, float]:
        """(frequency-only CE, state-only CE) on the given labels."""
        return (float(-np.log(self.frequency[actions]).mean()),
                float(-np.log(self.by_state[states, actions]).mean()))


@dataclass(frozen=True)
class HeldOut:
    """What `evaluate` reports for one set of samples."""

    samples: int
    cross_entropy: float
    frequency_ce: float  # predicting the training label frequencies for every sample
    state_ce: float  # predicting the training label frequencies of each position state
    accuracy: float
    balanced_accuracy: float  # mean recall over the actions present in the labels
    macro_f1: float  # over the actions present in the labels or the predictions
    predicted: dict[str, int]  # histogram of argmax actions
    non_hold_share: float
    position_ic: Interval  # P(up) - P(down) against the forward return of the action label
    forecast_fine_ic: Interval  # against the next fine-bar return
    forecast_coarse_ic: Interval  # against the next coarse-period return
    mean_segments: float
    halted_by_q: float  # share of samples the Q-head halted before the segment limit
    served: dict[str, int]  # histogram of the decision rule's actions (the argmax's without a rule)
    served_non_hold_share: float

    @property
    def warnings(self) -> list[str]:
        out = []
        if self.cross_entropy > self.frequency_ce - COLLAPSE_CE_MARGIN:
            out.append(f"held-out cross-entropy {self.cross_entropy:.4f} is not {COLLAPSE_CE_MARGIN} below predicting "
                       f"the label frequencies ({self.frequency_ce:.4f}): the model ignores its input")
        if self.non_hold_share < COLLAPSE_MIN_NON_HOLD:
            out.append(f"only {100 * self.non_hold_share:.2f}% of held-out predictions are not HOLD: the policy is "
                       "a constant")
        return out

    @property
    def input_independent(self) -> bool:
        return bool(self.warnings)

    def to_dict(self, prefix: str = "") -> dict[str, object]:
        d = asdict(self)
        for k in ("position_ic", "forecast_fine_ic", "forecast_coarse_ic"):
            iv = d.pop(k)
            d[k], d[f"{k}_low"], d[f"{k}_high"] = iv["value"], iv["low"], iv["high"]
        d["input_independent"] = self.input_independent
        return {f"{prefix}{k}": v for k, v in d.items()}

    def lines(self) -> list[str]:
        """A human-readable summary, one figure per line."""
        hist = ", ".join(f"{a} {n}" for a, n in self.predicted.items())
        return [
            f"samples            {self.samples}",
            f"cross-entropy      {self.cross_entropy:.4f}  (frequency-only {self.frequency_ce:.4f}, "
            f"state-only {self.state_ce:.4f})",
            f"balanced accuracy  {self.balanced_accuracy:.3f}   macro-F1 {self.macro_f1:.3f}   "
            f"accuracy {self.accuracy:.3f}",
            f"predicted (argmax) {hist}   (non-HOLD {100 * self.non_hold_share:.1f}%)",
            f"served (rule)      {', '.join(f'{a} {n}' for a, n in self.served.items())}   "
            f"(non-HOLD {100 * self.served_non_hold_share:.1f}%)",
            f"IC position        {self.position_ic}",
            f"IC forecast fine   {self.forecast_fine_ic}   coarse {self.forecast_coarse_ic}",
            f"halting            {self.mean_segments:.2f} segments on average, {100 * self.halted_by_q:.0f}% "
            "halted by the Q-head",
        ]


def classification_scores(labels: np.ndarray, predicted: np.ndarray) -> tuple[float, float, float]:
    """(accuracy, balanced accuracy, macro-F1) of argmax predictions against labels (indices into ACTIONS)."""
    accuracy = float(np.mean(labels == predicted)) if len(labels) else float("nan")
    recalls, f1s = [], []
    for a in range(len(ACTIONS)):
        is_label, is_pred = labels == a, predicted == a
        tp = float(np.sum(is_label & is_pred))
        if is_label.any():
            recalls.append(tp / is_label.sum())
        if is_label.any() or is_pred.any():
            f1s.append(2 * tp / (is_label.sum() + is_pred.sum()))
    return accuracy, float(np.mean(recalls)) if recalls else float("nan"), float(np.mean(f1s)) if f1s else float("nan")


@torch.no_grad()
def predict(model: HRM, act: ActConfig, data: TrainingSet, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Policy logits, forecasts and halting of every sample, with ACT as served (on the model's device)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    parts: list[dict[str, torch.Tensor]] = []
    for start in range(0, len(data), batch_size):
        part = data.subset(torch.arange(start, min(len(data), start + batch_size))).to(device)
        res = act_inference(model, part.inputs, act)
        parts.append({"policy_logits": res.outputs.policy_logits, "forecast_fine": res.outputs.forecast_fine,
                      "forecast_coarse": res.outputs.forecast_coarse, "segments": res.segments,
                      "halted_by_q": res.halted_by_q})
    model.train(was_training)
    return {k: torch.cat([p[k] for p in parts]).cpu() for k in parts[0]} if parts else {}


def evaluate(model: HRM, act: ActConfig, data: TrainingSet, baselines: LabelBaselines,
             rule: DecisionRule | None = None) -> HeldOut:
    """Every figure of `HeldOut` on all of ``data``, the baselines fitted on the training labels."""
    return score(predict(model, act, data), data, baselines, rule)


def score(out: dict[str, torch.Tensor], data: TrainingSet, baselines: LabelBaselines,
          rule: DecisionRule | None = None) -> HeldOut:
    """`HeldOut` from `predict`'s outputs on ``data``; ``rule`` gives the served actions."""
    y = data.targets
    labels, states = y.action.numpy(), y.state.numpy()
    logits = out["policy_logits"].double()
    probs = logits.softmax(dim=-1)
    predicted = probs.argmax(dim=-1).numpy()
    accuracy, balanced, f1 = classification_scores(labels, predicted)
    freq_ce, state_ce = baselines.cross_entropies(labels, states)
    counts = np.bincount(predicted, minlength=len(ACTIONS))
    served = predicted if rule is None else rule.choose(logits.numpy(), states)
    served_counts = np.bincount(served, minlength=len(ACTIONS))
    return HeldOut(
        samples=len(labels),
        cross_entropy=float(F.cross_entropy(logits, y.action)),
        frequency_ce=freq_ce, state_ce=state_ce, accuracy=accuracy, balanced_accuracy=balanced, macro_f1=f1,
        predicted={a: int(n) for a, n in zip(ACTIONS, counts)},
        non_hold_share=float(np.mean(predicted != HOLD)),
        position_ic=Interval.rank_ic(position_from_probs(probs).numpy(), y.action_return.numpy()),
        forecast_fine_ic=Interval.rank_ic(out["forecast_fine"].numpy(), y.out_b.numpy()),
        forecast_coarse_ic=Interval.rank_ic(out["forecast_coarse"].numpy(), y.out_a.numpy()),
        mean_segments=float(out["segments"].double().mean()),
        halted_by_q=float(out["halted_by_q"].double().mean()),
        served={a: int(n) for a, n in zip(ACTIONS, served_counts)},
        served_non_hold_share=float(np.mean(served != HOLD)),
    )


def baselines_by_instrument(train: TrainingSet) -> dict[int, LabelBaselines]:
    """The label baselines of each instrument's training samples alone, by instrument id: an instrument's own
    label frequencies are what its embedding alone could learn."""
    ids, y = train.inputs.instrument_id.numpy(), train.targets
    actions, states = y.action.numpy(), y.state.numpy()
    return {int(i): LabelBaselines.fit(actions[ids == i], states[ids == i]) for i in np.unique(ids)}


def score_by_instrument(out: dict[str, torch.Tensor], data: TrainingSet, baselines: dict[int, LabelBaselines],
                        rule: DecisionRule | None, names: Sequence[str]) -> dict[str, HeldOut]:
    """`score` of each instrument's samples alone against its own training label baselines, by name
    (``names[i]``: instrument id i + 1); empty when ``data`` holds one instrument."""
    ids = data.inputs.instrument_id.numpy()
    present = np.unique(ids)
    if len(present) < 2:
        return {}
    reports = {}
    for i in present:
        if int(i) not in baselines:
            continue  # no training sample of that instrument: nothing to compare its figures with
        rows = torch.from_numpy(np.flatnonzero(ids == i))
        name = names[i - 1] if 0 < i <= len(names) else f"instrument id {i}"
        reports[name] = score({k: v[rows] for k, v in out.items()}, data.subset(rows), baselines[int(i)], rule)
    return reports


def instrument_table(reports: dict[str, HeldOut]) -> list[str]:
    """One line per instrument: the figures that say whether the model learned that instrument."""
    lines = [f"{'instrument':<12}{'samples':>8}{'CE':>8}{'freq CE':>9}{'state CE':>10}{'bal acc':>9}"
             f"{'non-HOLD':>10}{'served':>8}  IC position"]
    for name, r in reports.items():
        lines.append(f"{name:<12}{r.samples:>8}{r.cross_entropy:>8.4f}{r.frequency_ce:>9.4f}{r.state_ce:>10.4f}"
                     f"{r.balanced_accuracy:>9.3f}{100 * r.non_hold_share:>9.1f}%{100 * r.served_non_hold_share:>7.1f}%"
                     f"  {r.position_ic}")
    return lines


def warn_if_collapsed(report: HeldOut, where: str) -> None:
    for w in report.warnings:
        log.warning("%s: %s", where, w)
