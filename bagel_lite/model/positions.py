"""Position encodings: how BAGEL tells tokens where they are.

Four mechanisms, from the outside in:

1. ``sincos_2d_table`` / ``PositionEmbedding`` — a fixed 2D sine-cosine table. ``vit_pos_embed`` (70x70)
   is added to ViT tokens after the connector; ``latent_pos_embed`` (64x64) is added to latent tokens.
2. SigLIP's *learned* 70x70 table (``nn.Embedding`` inside ``siglip.py``), added to the patch embeddings.
3. ``RotaryEmbedding2D`` — a 2D rotary variant for the ViT: half of each head is rotated by the row, half
   by the column. It exists in the official code but is switched off in the released model.
4. ``rope_cos_sin`` / ``apply_rope`` — the LLM's ordinary 1D RoPE. Text counts up one position per token;
   a whole image (every token of it) shares one position.
"""

from __future__ import annotations

import torch
from torch import nn


def sincos_1d(coords: torch.Tensor, dim: int) -> torch.Tensor:
    """(n,) coordinates -> (n, dim): ``[sin(x w_0) .. sin(x w_F-1), cos(x w_0) .. cos(x w_F-1)]``.

    ``F = dim / 2`` frequencies ``w_f = 10000^(-f / F)``; all sines first, then all cosines.
    """
    num_freqs = dim // 2
    omega = 1.0 / 10000 ** (torch.arange(num_freqs, dtype=torch.float64) / num_freqs)  # (F,)
    angles = coords.to(torch.float64)[:, None] * omega[None, :]  # (n, F)
    return torch.cat([angles.sin(), angles.cos()], dim=1)  # (n, dim)


def sincos_2d_table(grid_size: int, dim: int) -> torch.Tensor:
    """The (grid_size**2, dim) table; row ``r * grid_size + c`` is ``[sincos_1d(c), sincos_1d(r)]``.

    The first half of the channels encodes the column (horizontal), the second half the row. Computed in
    float64 and stored as float32, like the official table.
    """
    if dim % 4:
        raise ValueError(f"a 2D sin-cos table needs a channel count divisible by 4, got {dim}")
    row = torch.arange(grid_size).repeat_interleave(grid_size)  # (G*G,) 0,0,..,1,1,..
    col = torch.arange(grid_size).repeat(grid_size)  # (G*G,) 0,1,..,0,1,..
    table = torch.cat([sincos_1d(col, dim // 2), sincos_1d(row, dim // 2)], dim=1)  # (G*G, dim)
    return table.float()


class PositionEmbedding(nn.Module):
    """A frozen 2D sin-cos table looked up by flattened position id. Key: ``pos_embed`` (G*G, dim)."""

    def __init__(self, grid_size: int, dim: int):
        super().__init__()
        self.grid_size = grid_size
        # A Parameter (not a buffer) so it is part of the checkpoint, as in the official state dict.
        self.pos_embed = nn.Parameter(sincos_2d_table(grid_size, dim), requires_grad=False)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return self.pos_embed[position_ids]  # (num_tokens, dim)


# ----------------------------------------------------------------------------------------------------------
# Rotary embeddings


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[a, b] -> [-b, a]`` over the last dim: dimension i is paired with i + d/2 (the "NeoX" pairing)."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x_i, x_i+d/2) by the angle whose cos/sin are given; shapes broadcast."""
    return x * cos + rotate_half(x) * sin


def rope_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """(head_dim / 2,) angular frequencies ``theta^(-2f / head_dim)``."""
    return 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """1D RoPE tables for the LLM: (...,) integer positions -> cos, sin of shape (..., head_dim).

    The angles are computed in float32 (64 angles repeated twice for head_dim 128), then cast to ``dtype``.
    """
    inv_freq = rope_inv_freq(head_dim, theta).to(position_ids.device)  # (head_dim/2,)
    angles = position_ids.float()[..., None] * inv_freq  # (..., head_dim/2)
    angles = torch.cat([angles, angles], dim=-1)  # (..., head_dim)
    return angles.cos().to(dtype), angles.sin().to(dtype)


class RotaryEmbedding2D(nn.Module):
    """2D RoPE for ViT heads (official code, disabled in the release: ``vit_config.rope = False``).

    Each head of size ``head_dim`` is split in two: the first half is rotated by the patch's row, the second
    half by its column, each with ``head_dim/4`` frequencies. Tables are indexed by the flattened position
    id ``row * max_side + col``. The buffers are recomputed, not stored in checkpoints.
    """

    def __init__(self, head_dim: int, max_side: int, base: float = 10000.0):
        super().__init__()
        half = head_dim // 2  # dims rotated by one axis
        inv_freq = rope_inv_freq(half, base)  # (half/2,)
        row = torch.arange(max_side).float().repeat_interleave(max_side)  # (max_side**2,)
        col = torch.arange(max_side).float().repeat(max_side)  # (max_side**2,)
        for name, coord in (("h", row), ("w", col)):
            angles = coord[:, None] * inv_freq[None, :]  # (max_side**2, half/2)
            angles = torch.cat([angles, angles], dim=-1)  # (max_side**2, half)
            self.register_buffer(f"cos_{name}", angles.cos(), persistent=False)
            self.register_buffer(f"sin_{name}", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """x: (num_tokens, heads, head_dim); position_ids: (num_tokens,). Returns x rotated."""
        x_h, x_w = x.chunk(2, dim=-1)  # (num_tokens, heads, half) each
        cos_h, sin_h = self.cos_h[position_ids][:, None], self.sin_h[position_ids][:, None]
        cos_w, sin_w = self.cos_w[position_ids][:, None], self.sin_w[position_ids][:, None]
        return torch.cat([apply_rope(x_h, cos_h, sin_h), apply_rope(x_w, cos_w, sin_w)], dim=-1)
