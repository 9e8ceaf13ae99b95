"""Convergence diagnostics: does the L-state settle within a cycle?"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dualhrq.model.hrm import HRM, Carry, ModelInputs


@dataclass(frozen=True)
class ConvergenceReport:
    # [cycle][step]: batch mean of ||z_L(step) - z_L(step-1)|| / max(||z_L(step-1)||, ||z_L(step)||), in [0, 2]
    l_deltas: list[list[float]]
    h_norms: list[float]  # [cycle]: mean over batch of ||z_H|| after the cycle's H update


@torch.no_grad()
def convergence_diagnostics(model: HRM, batch: ModelInputs, carry: Carry | None = None) -> ConvergenceReport:
    """Replay one segment step by step (same updates as HRM.forward) and record the state norms."""
    model.eval()
    carry = carry or model.initial_carry(batch.batch_size)
    x_H, x_L = model.input(batch)
    x_L, _ = model.conditioning(x_L, batch.regime_features, batch.pattern_context, batch.pattern_mask)
    z_H, z_L = carry.z_H, carry.z_L
    l_deltas, h_norms = [], []
    for _ in range(model.cfg.n_cycles):
        cycle = []
        for _ in range(model.cfg.t_steps):
            new = model.l_step(z_L, z_H, x_L)
            scale = torch.maximum(z_L.flatten(1).norm(dim=1), new.flatten(1).norm(dim=1)).clamp_min(1e-12)
            cycle.append(((new - z_L).flatten(1).norm(dim=1) / scale).mean().item())
            z_L = new
        z_H = model.h_step(z_H, z_L, x_H)
        l_deltas.append(cycle)
        h_norms.append(z_H.flatten(1).norm(dim=1).mean().item())
    return ConvergenceReport(l_deltas, h_norms)
