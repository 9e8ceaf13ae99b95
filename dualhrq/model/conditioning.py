"""Market-context conditioning: regime classifier, attention pooling over retrieved patterns, FiLM on L tokens.

A fully masked pattern context pools to exactly zero, which is the regime-only path: the runtime fails open to
it when the pattern index is slow, and training drops patterns at random so that path stays calibrated.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dualhrq.config import ModelConfig


class RegimeClassifier(nn.Module):
    """Regime features [B, F_r] -> regime logits [B, R] (trained on unsupervised regime labels)."""

    def __init__(self, in_dim: int, hidden: int, num_regimes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, num_regimes))

    def forward(self, regime_features: torch.Tensor) -> torch.Tensor:
        return self.net(regime_features)


# exp(-1e4) is exactly zero in fp32 and fp16 beside any real score, and -1e4 is well inside fp16's range.
MASKED_SCORE = -1e4


class PatternPooling(nn.Module):
    """Attention pooling of K retrieved pattern vectors [B, K, P] under a validity mask [B, K] -> [B, P]."""

    def __init__(self, pattern_dim: int) -> None:
        super().__init__()
        self.key = nn.Linear(pattern_dim, pattern_dim)
        self.value = nn.Linear(pattern_dim, pattern_dim)
        self.query = nn.Parameter(torch.randn(pattern_dim) / math.sqrt(pattern_dim))

    def forward(self, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.to(context.dtype)  # [B, K], 1 = valid
        scores = self.key(context) @ self.query / math.sqrt(context.shape[-1])  # [B, K]
        # A masked score is replaced (not offset) by MASKED_SCORE: finite in fp16 too, so the fp16 graph holds
        # no 0 x inf and an all-masked row stays free of NaN; multiplying by the mask afterwards makes its
        # weights exactly zero, so it pools to exactly zero.
        weights = torch.softmax(scores.masked_fill(mask == 0, MASKED_SCORE), dim=-1) * mask  # [B, K]
        return torch.einsum("bk,bkp->bp", weights, self.value(context))  # [B, P]


class FiLM(nn.Module):
    """Fuse regime probabilities and pooled patterns into a per-channel scale and shift of the L tokens."""

    def __init__(self, num_regimes: int, pattern_dim: int, hidden: int, target_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(num_regimes + pattern_dim, hidden), nn.SiLU(), nn.Linear(hidden, 2 * target_dim)
        )
        # Small last layer: FiLM starts near identity but still reacts to the context from step one.
        nn.init.normal_(self.net[-1].weight, std=0.01)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, tokens: torch.Tensor, regime_probs: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.net(torch.cat([regime_probs, pooled], dim=-1)).chunk(2, dim=-1)  # [B, D] each
        return tokens * (1.0 + gamma.unsqueeze(1)) + beta.unsqueeze(1)


class Conditioning(nn.Module):
    """Reads model.regime_features, regime_hidden, num_regimes, pattern_dim, fusion_hidden and the width of
    the L tokens it conditions (model.l_module.hidden_dim)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.regime = RegimeClassifier(cfg.regime_features, cfg.regime_hidden, cfg.num_regimes)
        self.patterns = PatternPooling(cfg.pattern_dim)
        self.film = FiLM(cfg.num_regimes, cfg.pattern_dim, cfg.fusion_hidden, cfg.l_module.hidden_dim)

    def forward(self, l_tokens: torch.Tensor, regime_features: torch.Tensor, pattern_context: torch.Tensor,
                pattern_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (conditioned L tokens [B, T_l, D_l], regime logits [B, R])."""
        regime_logits = self.regime(regime_features)
        pooled = self.patterns(pattern_context, pattern_mask)
        return self.film(l_tokens, F.softmax(regime_logits, dim=-1), pooled), regime_logits
