"""The loss of one supervised segment: every head against its target, plus the two ACT Q-learning terms.

Terms (names are the keys of ``train.loss_weights``; missing keys take DEFAULT_LOSS_WEIGHTS):

- ``policy``: cross-entropy of the policy logits on the action label.
- ``quantity``: squared error of the bounded quantity head on the volatility-scaled quantity target.
- ``value``: Huber loss of the value head on what the policy as it is would earn over the label's horizon:
  the expectation under its (detached) probabilities of exposure-after-the-action x forward return minus the
  cost of changing exposure, from the label rule's position state (vocab.EXPOSURE_AFTER). A HOLD while long
  earns the return, so the target varies even while the policy mostly holds.
- ``forecast_coarse`` / ``forecast_fine``: Huber loss of the forecasts of out_a and out_b, the next coarse-period
  return and the return over the next data.label_horizon fine bars, in units of their training standard
  deviation (raw returns are ~1e-3: unscaled they would contribute nothing; Huber because returns are
  fat-tailed and one crash bar must not own a batch).
- ``regime``: cross-entropy of the regime classifier on the unsupervised regime labels.
- ``q_halt``: BCE of q_halt on "this segment's policy prediction is correct" (reference HRM losses.py).
- ``q_continue``: BCE of q_continue on the bootstrapped target from the next segment (see dualhrq.train.act).

Every term is a mean over the batch, so data-parallel ranks averaging their gradients reproduce the gradient
of the global batch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from dualhrq.config import TrainConfig
from dualhrq.errors import ConfigurationError
from dualhrq.model import ModelOutputs
from dualhrq.model.vocab import ACTIONS, EXPOSURE_AFTER, STATE_EXPOSURE

DEFAULT_LOSS_WEIGHTS: dict[str, float] = {
    "policy": 1.0,
    "quantity": 0.5,
    "value": 0.25,
    "forecast_coarse": 0.5,
    "forecast_fine": 0.5,
    "regime": 0.25,
    "q_halt": 0.5,  # the reference weighs the two Q terms 0.5 each against the main loss
    "q_continue": 0.5,
}

CLASS_WEIGHTS = ("none", "sqrt", "inverse")  # train.class_weights: policy CE weights from label frequencies


def loss_weights(cfg: TrainConfig) -> dict[str, float]:
    """DEFAULT_LOSS_WEIGHTS overridden by ``train.loss_weights``; an unknown term is a configuration error."""
    unknown = sorted(set(cfg.loss_weights) - set(DEFAULT_LOSS_WEIGHTS))
    if unknown:
        raise ConfigurationError(f"train.loss_weights.{unknown[0]}: unknown loss term "
                                 f"(known: {', '.join(DEFAULT_LOSS_WEIGHTS)})")
    return {**DEFAULT_LOSS_WEIGHTS, **cfg.loss_weights}


@dataclass
class Targets:
    """Per-sample supervision, batch first. Returns are already divided by their training scale."""

    action: torch.Tensor  # [B] int64, index into heads.ACTIONS
    quantity: torch.Tensor  # [B] float, in the quantity head's range
    out_a: torch.Tensor  # [B] next coarse-period return / its scale
    out_b: torch.Tensor  # [B] return over the next data.label_horizon fine bars / its scale
    action_return: torch.Tensor  # [B] what the action earns: out_b too (the action label's horizon is out_b's)
    cost: torch.Tensor  # [B] round-trip cost in the same units as action_return
    regime: torch.Tensor  # [B] int64 regime label
    state: torch.Tensor  # [B] int64 the label rule's position state (FLAT, LONG, SHORT)

    def index(self, idx: torch.Tensor) -> Targets:
        return Targets(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    def to(self, device: torch.device | str) -> Targets:
        return Targets(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def policy_correct(out: ModelOutputs, targets: Targets) -> torch.Tensor:
    """[B] bool: the segment's policy prediction (argmax) equals the action label: the q_halt target."""
    return out.policy_logits.argmax(dim=-1) == targets.action


def action_returns(targets: Targets) -> torch.Tensor:
    """[B, 5] what each action would earn from the sample's position state: exposure after it x forward return
    - the cost of the exposure it changes (a round trip costs ``cost``, so one unit of change costs half)."""
    dtype, dev = targets.action_return.dtype, targets.action_return.device
    after = torch.tensor(EXPOSURE_AFTER, dtype=dtype, device=dev)[targets.state]  # [B, 5]
    before = torch.tensor(STATE_EXPOSURE, dtype=dtype, device=dev)[targets.state]  # [B]
    change = (after - before.unsqueeze(1)).abs()
    return after * targets.action_return.unsqueeze(1) - change * (targets.cost / 2).unsqueeze(1)


def expected_policy_return(policy_logits: torch.Tensor, targets: Targets) -> torch.Tensor:
    """[B] the value target: what the policy as it is would earn, in expectation over its probabilities."""
    return (policy_logits.softmax(dim=-1) * action_returns(targets)).sum(dim=-1)


def class_weights(actions: torch.Tensor, mode: str) -> torch.Tensor | None:
    """[5] policy CE weights from the training labels' frequencies: none, 1/sqrt(freq) or 1/freq, scaled to
    mean 1 over the labels (so the loss keeps its size); None for "none"."""
    if mode not in CLASS_WEIGHTS:
        raise ConfigurationError(f"train.class_weights: {mode!r} is not one of {', '.join(CLASS_WEIGHTS)}")
    if mode == "none":
        return None
    freq = torch.bincount(actions, minlength=len(ACTIONS)).double().clamp(min=1) / len(actions)
    w = freq.rsqrt() if mode == "sqrt" else 1.0 / freq
    return (w / (w * freq).sum()).float()


def segment_loss(out: ModelOutputs, targets: Targets, q_continue_target: torch.Tensor,
                 weights: dict[str, float], policy_weights: torch.Tensor | None = None,
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(weighted total, {term: unweighted value}) for one segment's outputs; ``policy_weights`` [5] weigh the
    policy cross-entropy per class (`class_weights`). The terms stay attached to the graph, so the per-term
    gradient norms can differentiate them; detach them to log."""
    terms = _terms(out, targets, q_continue_target, policy_weights)
    return sum(weights[k] * v for k, v in terms.items()), terms


def _terms(out: ModelOutputs, targets: Targets, q_continue_target: torch.Tensor,
           policy_weights: torch.Tensor | None) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        correct = policy_correct(out, targets)
        value_target = expected_policy_return(out.policy_logits, targets)
    return {
        "policy": F.cross_entropy(out.policy_logits, targets.action, weight=policy_weights),
        "quantity": F.mse_loss(out.quantity, targets.quantity),
        "value": F.huber_loss(out.value, value_target),
        "forecast_coarse": F.huber_loss(out.forecast_coarse, targets.out_a),
        "forecast_fine": F.huber_loss(out.forecast_fine, targets.out_b),
        "regime": F.cross_entropy(out.regime_logits, targets.regime),
        "q_halt": F.binary_cross_entropy_with_logits(out.q_logits[:, 0], correct.to(out.q_logits.dtype)),
        "q_continue": F.binary_cross_entropy_with_logits(out.q_logits[:, 1], q_continue_target),
    }
