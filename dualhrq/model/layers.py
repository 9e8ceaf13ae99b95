"""Transformer building blocks shared by the H- and L-modules: RMSNorm, SwiGLU, attention, a post-norm block.

Shapes: B batch, S sequence (T_h or T_l), D hidden width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dualhrq.config import ModuleConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Written out (not F.rms_norm) so the ONNX graph is plain arithmetic on every opset ORT supports, and
        # as x / sqrt(.) (not x * rsqrt(.)): the form ONNX Runtime fuses into SimplifiedLayerNormalization.
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)  # one matmul for gate and up
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).split(self.hidden, dim=-1)  # a constant split: no shape read in the graph
        return self.down(F.silu(gate) * up)


class Attention(nn.Module):
    """Non-causal multi-head self-attention: every bar of a window may look at every other bar of it.

    seq_len is fixed by the config (the positions are learned per slot), so every reshape but the batch is a
    constant: the exported graph holds no shape arithmetic, which ONNX Runtime cannot fold while the batch
    axis is dynamic."""

    def __init__(self, dim: int, num_heads: int, seq_len: int) -> None:
        super().__init__()
        self.num_heads, self.seq_len = num_heads, seq_len
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # qkv's columns are [q | k | v], each head_dim-wide per head: one reshape, one transpose and one split
        # give the 3 x num_heads heads.
        s = self.seq_len
        heads = self.qkv(x).reshape(-1, s, 3 * self.num_heads, self.head_dim).transpose(1, 2)  # [B, 3H, S, hd]
        q, k, v = heads.split(self.num_heads, dim=1)  # [B, H, S, hd] each
        # Explicit softmax(QK^T)V rather than SDPA: exports to the same few ONNX ops everywhere and keeps the
        # activation-by-activation MatMuls recognisable, so int8 quantisation can leave them alone.
        att = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim))  # [B, H, S, S]
        y = torch.matmul(att.softmax(dim=-1), v)  # [B, H, S, hd]
        return self.out(y.transpose(1, 2).reshape(-1, s, self.num_heads * self.head_dim))


class Block(nn.Module):
    """Post-norm transformer block, as in the reference HRM: x = norm(x + attn(x)); x = norm(x + mlp(x))."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, eps: float, seq_len: int) -> None:
        super().__init__()
        self.attn = Attention(dim, num_heads, seq_len)
        self.mlp = SwiGLU(dim, ffn_dim)
        self.norm1 = RMSNorm(dim, eps)
        self.norm2 = RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.mlp(x))


class ReasoningModule(nn.Module):
    """A stack of blocks that updates a recurrent state given an injection (reference: HRM ReasoningModule)."""

    def __init__(self, module: ModuleConfig, eps: float, seq_len: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Block(module.hidden_dim, module.num_heads, module.ffn_dim, eps, seq_len)
                                    for _ in range(module.num_layers))

    def forward(self, state: torch.Tensor, injection: torch.Tensor) -> torch.Tensor:
        x = state + injection
        for layer in self.layers:
            x = layer(x)
        return x
