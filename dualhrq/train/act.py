"""Adaptive computation time with Q-learning halting, for training and for PyTorch inference.

Training follows the reference HRM (sapientinc/HRM, models/hrm/hrm_act_v1.py): a batch is B *slots*, each
working on one sample for as many segments as ACT gives it. Every training step runs one segment on every
slot; a slot that halted in the previous step first admits a fresh sample (its carry and segment count are
reset). A slot halts when its segment count reaches ``act.max_segments``, or when q_halt > q_continue and it
has run at least ``act.min_segments`` segments and at least the random minimum that exploration drew for it.
The Q-head learns from two targets: q_halt from "this segment's policy prediction is correct" (see losses)
and q_continue from the next segment, bootstrapped without a target network or replay buffer as in the
reference: sigmoid(q_halt') at the last segment, otherwise sigmoid(max(q_halt', q_continue')).

Inference (``act_inference``) halts the same way without exploration, or runs exactly
``act.fixed_segments`` when that is set, like the runtime's ACT loop over exported engines. Both phases
decide with the one halting rule, dualhrq.model.halting.halts.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from dualhrq.config import ActConfig
from dualhrq.model import HRM, Carry, ModelInputs, ModelOutputs
from dualhrq.model.halting import halts, inference_bounds


@dataclass
class SlotState:
    """The persistent training carry of B slots (reference: HierarchicalReasoningModel_ACTV1Carry)."""

    carry: Carry
    steps: torch.Tensor  # [B] int64 segments run on the current sample
    halted: torch.Tensor  # [B] bool: the slot finished its sample last step and admits a new one next step
    sample: torch.Tensor  # [B] int64 index of the current sample in the training set
    drop_patterns: torch.Tensor  # [B] bool: the current sample trains regime-only (pattern dropout)

    @classmethod
    def start(cls, model: HRM, batch_size: int, device: torch.device | str) -> SlotState:
        """Every slot halted, so the first step admits a full batch."""
        return cls(model.initial_carry(batch_size, device),
                   torch.zeros(batch_size, dtype=torch.int64, device=device),
                   torch.ones(batch_size, dtype=torch.bool, device=device),
                   torch.zeros(batch_size, dtype=torch.int64, device=device),
                   torch.zeros(batch_size, dtype=torch.bool, device=device))

    def admit(self, fresh_sample: torch.Tensor, fresh_drop: torch.Tensor) -> SlotState:
        """Halted slots take a fresh sample, a zero carry and a zero segment count; the others carry on."""
        h = self.halted
        carry = Carry(torch.where(h.view(-1, 1, 1), 0.0, self.carry.z_H),
                      torch.where(h.view(-1, 1, 1), 0.0, self.carry.z_L))
        return SlotState(carry, torch.where(h, 0, self.steps), torch.zeros_like(h),
                         torch.where(h, fresh_sample, self.sample), torch.where(h, fresh_drop, self.drop_patterns))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"z_H": self.carry.z_H, "z_L": self.carry.z_L,
                **{f.name: getattr(self, f.name) for f in fields(self) if f.name != "carry"}}

    @classmethod
    def from_state_dict(cls, d: dict[str, torch.Tensor], device: torch.device | str) -> SlotState:
        return cls(Carry(d["z_H"].to(device), d["z_L"].to(device)),
                   *(d[f.name].to(device) for f in fields(cls) if f.name != "carry"))


def halt_decision(q_logits: torch.Tensor, steps: torch.Tensor, act: ActConfig,
                  explore_min: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(halted [B], is_last [B]) after a training segment; ``steps`` counts it, ``explore_min`` is 0 for slots
    that do not explore this step."""
    halted, _ = halts(q_logits, steps, torch.clamp(explore_min, min=act.min_segments), act.max_segments)
    return halted, steps >= act.max_segments


def q_continue_target(next_q_logits: torch.Tensor, is_last: torch.Tensor) -> torch.Tensor:
    """[B] target probability for q_continue from the next segment's Q logits (computed without grad)."""
    next_halt, next_continue = next_q_logits[:, 0], next_q_logits[:, 1]
    return torch.sigmoid(torch.where(is_last, next_halt, torch.maximum(next_halt, next_continue)))


@dataclass
class ActOutcome:
    outputs: ModelOutputs  # per sample, as of the segment it halted on
    segments: torch.Tensor  # [B] int64 segments run
    halted_by_q: torch.Tensor  # [B] bool: True when q halted it, False at the segment limit


@torch.no_grad()
def act_inference(model: HRM, inputs: ModelInputs, act: ActConfig, carry: Carry | None = None) -> ActOutcome:
    """Run segments until every sample halts (q_halt > q_continue after min_segments, or max_segments), or
    exactly ``act.fixed_segments`` when set. The whole batch runs until its last sample halts; each sample
    keeps the outputs of its own halting segment."""
    b = inputs.batch_size
    device = inputs.h_tokens.device
    carry = carry or model.initial_carry(b, device)
    minimum, limit = inference_bounds(act)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    segments = torch.zeros(b, dtype=torch.int64, device=device)
    by_q = torch.zeros(b, dtype=torch.bool, device=device)
    final: dict[str, torch.Tensor] = {}
    for seg in range(1, limit + 1):
        carry, out = model(inputs, carry)
        stop, q_halt = halts(out.q_logits, seg, minimum, limit)
        stop = stop & ~done
        for f in fields(out):
            value = getattr(out, f.name)
            final[f.name] = value.clone() if f.name not in final else torch.where(
                stop.view(-1, *([1] * (value.dim() - 1))), value, final[f.name])
        segments[stop] = seg
        by_q |= stop & q_halt
        done |= stop
        if done.all():
            break
    return ActOutcome(ModelOutputs(**final), segments, by_q)
