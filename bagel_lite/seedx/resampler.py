"""A resampler: a fixed number of learnable queries that read a set of vectors by cross-attention.

SEED-X uses this shape of module three times:

* in the de-tokenizer, ``ResamplerXLV2`` (64 queries, width 1024, depth 4) turns the ViT embeddings into the
  64 tokens SDXL's U-Net cross-attends to, in place of text embeddings;
* on the LLM side, an *input* resampler maps ViT embeddings into the LLM, and an *output* resampler
  (Qwen-VL's one-layer cross-attention, 64 queries) maps the LLM's hidden states of its 64 image-query tokens
  back to ViT-embedding space.

``Resampler(depth=1, feedforward=False)`` is the one-layer cross-attention head; ``depth > 1`` with
feed-forward blocks is the Perceiver-style multi-layer resampler. Both: queries (num_queries, width),
inputs projected to ``width``, pre-LayerNorm attention with residuals, output projected to ``out_dim``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CrossAttention(nn.Module):
    """Multi-head attention of ``x`` (B, L, width) over ``context`` (B, M, context_dim).

    Projection names follow diffusers' ``attn2`` (``to_q``, ``to_k``, ``to_v``, ``to_out``): in the
    de-tokenizer, SEED-X trains exactly the ``to_k`` / ``to_v`` of these layers.
    """

    def __init__(self, width: int, context_dim: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.to_q = nn.Linear(width, width, bias=False)
        self.to_k = nn.Linear(context_dim, width, bias=False)
        self.to_v = nn.Linear(context_dim, width, bias=False)
        self.to_out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """key_mask: (B, M) True where a context vector may be attended to (None: all)."""
        def heads(t):  # (B, n, width) -> (B, heads, n, width / heads)
            return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        q, k, v = heads(self.to_q(x)), heads(self.to_k(context)), heads(self.to_v(context))
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, M)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, heads, L, width / heads)
        return self.to_out(out.transpose(1, 2).flatten(2))  # (B, L, width)


def feed_forward(width: int, mult: int = 4) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width * mult), nn.GELU(), nn.Linear(width * mult, width))


class ResamplerLayer(nn.Module):
    def __init__(self, width: int, heads: int, feedforward: bool):
        super().__init__()
        self.norm_queries = nn.LayerNorm(width)
        self.norm_inputs = nn.LayerNorm(width)
        self.attn = CrossAttention(width, width, heads)
        self.ff = feed_forward(width) if feedforward else None

    def forward(self, latents: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        latents = latents + self.attn(self.norm_queries(latents), self.norm_inputs(inputs))
        return latents if self.ff is None else latents + self.ff(latents)


class Resampler(nn.Module):
    """(B, M, in_dim) inputs -> (B, num_queries, out_dim), whatever M is."""

    def __init__(self, in_dim: int, out_dim: int, num_queries: int, *, width: int, depth: int = 1, heads: int = 4,
                 feedforward: bool = True):
        super().__init__()
        self.num_queries = num_queries
        self.queries = nn.Parameter(torch.randn(num_queries, width) * width**-0.5)  # (Q, width), learnable
        self.proj_in = nn.Linear(in_dim, width)
        self.layers = nn.ModuleList(ResamplerLayer(width, heads, feedforward) for _ in range(depth))
        self.norm_out = nn.LayerNorm(width)
        self.proj_out = nn.Linear(width, out_dim)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(inputs)  # (B, M, width)
        latents = self.queries.expand(inputs.shape[0], -1, -1)  # (B, Q, width)
        for layer in self.layers:
            latents = layer(latents, x)
        return self.proj_out(self.norm_out(latents))  # (B, Q, out_dim)
