"""The timestep embedder: tells each latent token how noisy it is.

A flow time ``t`` in [0, 1] (1 = pure noise, 0 = clean image; already *shifted*, never multiplied by 1000)
becomes 256 sinusoidal features — **cosines first, then sines** — and a two-layer MLP maps them to the LLM
width. The result is added to every latent token's embedding. Clean context latents get the embedding of
``t = 0``, not "no embedding".
"""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_features(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """(n,) flow times -> (n, dim) features ``[cos(t f_0) .. cos(t f_h-1), sin(t f_0) .. sin(t f_h-1)]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (n, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (n, dim)


class TimestepEmbedder(nn.Module):
    """Keys ``time_embedder.mlp.0`` (256 -> D) and ``time_embedder.mlp.2`` (D -> D), SiLU between."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        features = timestep_features(t, self.frequency_embedding_size)  # (n, 256)
        return self.mlp(features.to(self.mlp[0].weight.dtype))  # (n, hidden)
