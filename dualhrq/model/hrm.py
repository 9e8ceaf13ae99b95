"""The Hierarchical Reasoning Model: one segment of N cycles x T L-steps, with an explicit carry.

Reference: sapientinc/HRM models/hrm/hrm_act_v1.py. Differences: the two levels run on different sequences
(coarse bars for H, fine bars for L) and widths, so each level injects a projected mean-pooled state of the
other instead of adding states token by token; market context conditions the L tokens through FiLM; the heads
read the newest token of each level beside (or instead of) the mean (model.readout).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import msgspec
import torch
from torch import nn

from dualhrq.config import ModelConfig
from dualhrq.errors import ConfigurationError
from dualhrq.model.conditioning import Conditioning
from dualhrq.model.heads import Heads, readout
from dualhrq.model.layers import ReasoningModule


@dataclass
class Carry:
    """The recurrent state passed from one segment to the next."""

    z_H: torch.Tensor  # [B, T_h, D_h]
    z_L: torch.Tensor  # [B, T_l, D_l]

    def detach(self) -> Carry:
        return Carry(self.z_H.detach(), self.z_L.detach())


@dataclass
class ModelInputs:
    h_tokens: torch.Tensor  # [B, T_h, F_c] float, normalised coarse-bar features
    l_tokens: torch.Tensor  # [B, T_l, F_f] float, normalised fine-bar features
    instrument_id: torch.Tensor  # [B] int64, 0 = unknown
    timeframe_id: torch.Tensor  # [B] int64, 0 = unknown
    regime_features: torch.Tensor  # [B, F_r]
    pattern_context: torch.Tensor  # [B, K, P]
    pattern_mask: torch.Tensor  # [B, K], 1 = valid neighbour; all zeros = regime-only

    @property
    def batch_size(self) -> int:
        return self.h_tokens.shape[0]

    @classmethod
    def random(cls, cfg: ModelConfig, batch_size: int, seed: int = 0, patterns: bool = True) -> ModelInputs:
        """Synthetic inputs of the right shapes (tests, smoke runs); real inputs come from dualhrq.data."""
        g = torch.Generator().manual_seed(seed)
        b = batch_size
        return cls(
            h_tokens=torch.randn(b, cfg.coarse_len, cfg.coarse_features, generator=g),
            l_tokens=torch.randn(b, cfg.fine_len, cfg.fine_features, generator=g),
            instrument_id=torch.randint(0, cfg.instrument_vocab, (b,), generator=g),
            timeframe_id=torch.randint(0, cfg.timeframe_vocab, (b,), generator=g),
            regime_features=torch.randn(b, cfg.regime_features, generator=g),
            pattern_context=torch.randn(b, cfg.pattern_k, cfg.pattern_dim, generator=g),
            pattern_mask=torch.full((b, cfg.pattern_k), float(patterns)),
        )


@dataclass
class ModelOutputs:
    policy_logits: torch.Tensor  # [B, 5] in ACTIONS order
    quantity: torch.Tensor  # [B] in [quantity_min, quantity_max]
    value: torch.Tensor  # [B]
    q_logits: torch.Tensor  # [B, 2]: halt, continue
    forecast_coarse: torch.Tensor  # [B] next coarse-period return (the out_a label)
    forecast_fine: torch.Tensor  # [B] return over the next data.label_horizon fine bars (the out_b label)
    regime_logits: torch.Tensor  # [B, R]


class InputNetwork(nn.Module):
    """Bar features + learned positions + instrument/timeframe embeddings -> H and L input embeddings."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d_h, d_l = cfg.h_module.hidden_dim, cfg.l_module.hidden_dim
        self.instrument = nn.Embedding(cfg.instrument_vocab, cfg.instrument_dim)
        self.timeframe = nn.Embedding(cfg.timeframe_vocab, cfg.timeframe_dim)
        ctx_dim = cfg.instrument_dim + cfg.timeframe_dim
        self.h_proj = nn.Linear(cfg.coarse_features, d_h)
        self.l_proj = nn.Linear(cfg.fine_features, d_l)
        self.h_ctx = nn.Linear(ctx_dim, d_h, bias=False)
        self.l_ctx = nn.Linear(ctx_dim, d_l, bias=False)
        # NOTE: positions as the reference HRM scales its embeddings: stored at std 1/sqrt(D), used times
        # sqrt(D), so each position is as large as a token's features (std ~0.6) and moves as fast under Adam.
        # At std 0.02 the blocks could barely tell the newest bar from the oldest.
        self.h_pos_scale, self.l_pos_scale = math.sqrt(d_h), math.sqrt(d_l)
        self.h_pos = nn.Parameter(torch.randn(cfg.coarse_len, d_h) / self.h_pos_scale)
        self.l_pos = nn.Parameter(torch.randn(cfg.fine_len, d_l) / self.l_pos_scale)

    def forward(self, x: ModelInputs) -> tuple[torch.Tensor, torch.Tensor]:
        # ctx [B, instrument_dim + timeframe_dim]
        ctx = torch.cat([self.instrument(x.instrument_id), self.timeframe(x.timeframe_id)], dim=-1)
        h = self.h_proj(x.h_tokens) + self.h_pos_scale * self.h_pos + self.h_ctx(ctx).unsqueeze(1)  # [B, T_h, D_h]
        l = self.l_proj(x.l_tokens) + self.l_pos_scale * self.l_pos + self.l_ctx(ctx).unsqueeze(1)  # [B, T_l, D_l]
        return h, l


class HRM(nn.Module):
    """One call = one segment. Component attributes match the parameter budget's rows (see budget.py)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h, l = cfg.h_module, cfg.l_module
        self.input = InputNetwork(cfg)
        self.conditioning = Conditioning(cfg)
        self.h_module = ReasoningModule(h, cfg.norm_eps, cfg.coarse_len)
        self.l_module = ReasoningModule(l, cfg.norm_eps, cfg.fine_len)
        # Cross-level injection: each level sees the other's mean-pooled state, projected to its width.
        self.h_to_l = nn.Linear(h.hidden_dim, l.hidden_dim, bias=False)
        self.l_to_h = nn.Linear(l.hidden_dim, h.hidden_dim, bias=False)
        self.heads = Heads(cfg)

    def initial_carry(self, batch_size: int, device: torch.device | str = "cpu") -> Carry:
        c = self.cfg
        return Carry(torch.zeros(batch_size, c.coarse_len, c.h_module.hidden_dim, device=device),
                     torch.zeros(batch_size, c.fine_len, c.l_module.hidden_dim, device=device))

    def l_step(self, z_L: torch.Tensor, z_H: torch.Tensor, x_L: torch.Tensor) -> torch.Tensor:
        return self.l_module(z_L, self.l_injection(z_H, x_L))

    def l_injection(self, z_H: torch.Tensor, x_L: torch.Tensor) -> torch.Tensor:
        """What every L-step of one cycle adds to its state: the inputs and the projected pooled H state."""
        return x_L + self.h_to_l(z_H.mean(dim=1)).unsqueeze(1)

    def h_step(self, z_H: torch.Tensor, z_L: torch.Tensor, x_H: torch.Tensor) -> torch.Tensor:
        return self.h_module(z_H, x_H + self.l_to_h(z_L.mean(dim=1)).unsqueeze(1))

    def forward(self, inputs: ModelInputs, carry: Carry) -> tuple[Carry, ModelOutputs]:
        x_H, x_L = self.input(inputs)
        x_L, regime_logits = self.conditioning(x_L, inputs.regime_features, inputs.pattern_context,
                                               inputs.pattern_mask)
        z_H, z_L = carry.z_H, carry.z_L
        n, t = self.cfg.n_cycles, self.cfg.t_steps
        grad = torch.is_grad_enabled()
        # One-step gradient (HRM paper): every update but the last L-step and the last H-update runs without
        # grad, so memory is constant in N x T and the gradient is the fixed-point approximation. z_H is fixed
        # within a cycle, so its L injection is computed once per cycle (the exported graph multiplies each
        # weight once per distinct input); only with grad does the last L-step recompute it, for h_to_l's grad.
        with torch.no_grad():
            for cycle in range(n):
                injection = self.l_injection(z_H, x_L)
                for step in range(t):
                    if not (cycle == n - 1 and step == t - 1):
                        z_L = self.l_module(z_L, injection)
                if cycle != n - 1:
                    z_H = self.h_step(z_H, z_L, x_H)
        z_L = self.l_module(z_L, self.l_injection(z_H, x_L) if grad else injection)
        z_H = self.h_step(z_H, z_L, x_H)
        out = self.heads(readout(z_H, self.cfg.readout), readout(z_L, self.cfg.readout))
        return Carry(z_H, z_L), ModelOutputs(regime_logits=regime_logits, **out)

    def grow_instruments(self, new_vocab: int) -> None:
        """Enlarge the instrument vocabulary to `new_vocab` rows, keeping every existing row and weight."""
        old = self.input.instrument
        if new_vocab <= old.num_embeddings:
            raise ConfigurationError(f"new_vocab: must exceed the current model.instrument_vocab "
                                     f"({old.num_embeddings}), got {new_vocab}")
        grown = nn.Embedding(new_vocab, old.embedding_dim).to(old.weight.device, old.weight.dtype)
        with torch.no_grad():
            # New rows start as the "unknown" row: a new instrument behaves as unknown until it is trained.
            grown.weight.copy_(old.weight[0].expand(new_vocab, -1))
            grown.weight[: old.num_embeddings] = old.weight
        self.input.instrument = grown
        self.cfg = msgspec.structs.replace(self.cfg, instrument_vocab=new_vocab)
