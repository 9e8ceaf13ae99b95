"""Output heads read from the recurrent states after a segment, through a recency-aware readout.

Policy, quantity and value see both levels; the Q-head (halt, continue) and the coarse forecast read the slow
H state; the fine forecast reads the fast L state.
"""

from __future__ import annotations

import torch
from torch import nn

from dualhrq.config import ModelConfig
from dualhrq.errors import ConfigurationError
from dualhrq.model.vocab import ACTIONS

READOUT_WIDTH = {"last": 1, "mean": 1, "last+mean": 2}  # readout width in multiples of the level's width


def readout(z: torch.Tensor, mode: str) -> torch.Tensor:
    """z [B, S, D] (tokens oldest first) -> [B, READOUT_WIDTH[mode] * D]: the newest token, the mean, or both."""
    match mode:
        case "last":
            return z[:, -1]
        case "mean":
            return z.mean(dim=1)
        case "last+mean":
            return torch.cat([z[:, -1], z.mean(dim=1)], dim=-1)
    raise ConfigurationError(f"model.readout: unknown mode {mode!r} (known: {', '.join(READOUT_WIDTH)})")


class Heads(nn.Module):
    """Reads model.readout and the two levels' widths (the readouts' widths follow), model.head_hidden and the
    quantity range (model.quantity_min, quantity_max)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.readout not in READOUT_WIDTH:
            raise ConfigurationError(f"model.readout: unknown mode {cfg.readout!r} (known: {', '.join(READOUT_WIDTH)})")
        width = READOUT_WIDTH[cfg.readout]
        h_dim, l_dim, hidden = width * cfg.h_module.hidden_dim, width * cfg.l_module.hidden_dim, cfg.head_hidden
        self.trunk = nn.Sequential(nn.Linear(h_dim + l_dim, hidden), nn.SiLU())
        self.policy = nn.Linear(hidden, len(ACTIONS))
        self.quantity = nn.Linear(hidden, 1)
        self.value = nn.Linear(hidden, 1)
        self.q = nn.Linear(h_dim, 2)
        self.forecast_coarse = nn.Linear(h_dim, 1)
        self.forecast_fine = nn.Linear(l_dim, 1)
        self.quantity_min, self.quantity_max = cfg.quantity_min, cfg.quantity_max
        # As in the reference HRM: Q starts strongly negative so early training halts only when told to.
        nn.init.zeros_(self.q.weight)
        nn.init.constant_(self.q.bias, -5.0)

    def forward(self, h_pooled: torch.Tensor, l_pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        """h_pooled [B, h_dim], l_pooled [B, l_dim] (readouts) -> head outputs ([B, 5], [B], [B], [B, 2], [B], [B])."""
        x = self.trunk(torch.cat([h_pooled, l_pooled], dim=-1))
        span = self.quantity_max - self.quantity_min
        return {
            "policy_logits": self.policy(x),
            "quantity": self.quantity_min + span * torch.sigmoid(self.quantity(x).squeeze(-1)),
            "value": self.value(x).squeeze(-1),
            "q_logits": self.q(h_pooled),  # [:, 0] halt, [:, 1] continue
            "forecast_coarse": self.forecast_coarse(h_pooled).squeeze(-1),
            "forecast_fine": self.forecast_fine(l_pooled).squeeze(-1),
        }
