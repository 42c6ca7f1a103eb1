"""A Llama-style decoder: RMSNorm, rotary embeddings, SwiGLU MLP, causal SDPA attention.

The model knows nothing of DDP, Ray or representations. Every linear layer inside the blocks is made
by the `linear(in_features, out_features)` factory it is given, the one seam through which a
compressed representation enters (see `workers.compressed_linear`). The token embedding and the
output head are plain dense layers, untied, and are not part of the non-embedding count N.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from workers.config import ModelConfig

LinearFactory = Callable[[int, int], nn.Module]


def dense_linear(in_features: int, out_features: int) -> nn.Module:
    return nn.Linear(in_features, out_features, bias=False)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rotary_tables(head_dim: int, seq_len: int, base: float = 10000.0) -> torch.Tensor:
    """cos and sin of each (position, frequency), stacked: shape (2, seq_len, head_dim / 2)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)
    return torch.stack([angles.cos(), angles.sin()]).float()


def apply_rotary(x: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (first half, second half) of x (batch, heads, time, head_dim)."""
    cos, sin = tables[0, : x.shape[-2]].to(x.dtype), tables[1, : x.shape[-2]].to(x.dtype)
    first, second = x.chunk(2, dim=-1)
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, linear: LinearFactory):
        super().__init__()
        self.n_heads = config.n_heads
        d = config.d_model
        self.q, self.k, self.v, self.o = (linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor, rotary: torch.Tensor) -> torch.Tensor:
        batch, time, d = x.shape
        q, k, v = (
            proj(x).view(batch, time, self.n_heads, d // self.n_heads).transpose(1, 2)
            for proj in (self.q, self.k, self.v)
        )
        q, k = apply_rotary(q, rotary), apply_rotary(k, rotary)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(batch, time, d))


class SwiGLU(nn.Module):
    def __init__(self, config: ModelConfig, linear: LinearFactory):
        super().__init__()
        self.gate = linear(config.d_model, config.ffn_hidden)
        self.up = linear(config.d_model, config.ffn_hidden)
        self.down = linear(config.ffn_hidden, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, config: ModelConfig, linear: LinearFactory):
        super().__init__()
        self.attention_norm = RMSNorm(config.d_model)
        self.attention = Attention(config, linear)
        self.mlp_norm = RMSNorm(config.d_model)
        self.mlp = SwiGLU(config, linear)

    def forward(self, x: torch.Tensor, rotary: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), rotary)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    """Decoder over `config.vocab_size` tokens; `forward(inputs) -> logits` (batch, time, vocab)."""

    def __init__(self, config: ModelConfig, linear: LinearFactory = dense_linear):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config, linear) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        rotary = rotary_tables(config.d_model // config.n_heads, config.seq_len)
        self.register_buffer("rotary", rotary, persistent=False)
        self.apply(self._init_weights)
        # Scale the residual-branch outputs by depth (GPT-2), so deeper models start stable.
        for block in self.blocks:
            for projection in (block.attention.o, block.mlp.down):
                nn.init.normal_(projection.weight, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def non_embedding_parameters(self) -> list[nn.Parameter]:
        """Parameters counted in N: everything but the token embedding and the output head."""
        return [
            p for name, p in self.named_parameters() if not name.startswith(("embedding", "head"))
        ]

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = self.embedding(inputs)
        for block in self.blocks:
            x = block(x, self.rotary)
        return self.head(self.norm(x))
