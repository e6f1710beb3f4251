"""NaViT patchification: images of any size become rows of tokens, each with a 2D position id.

BAGEL cuts two kinds of grids into tokens with the same function:

* pixels, for the ViT: 14x14 patches of an RGB image -> tokens of 14*14*3 = 588 numbers;
* latents, for generation: 2x2 patches of a 16-channel VAE latent -> tokens of 2*2*16 = 64 numbers.

Tokens are in raster order (top row left to right, then the next row). Inside a token the numbers run over
(pixel row p, pixel column q, channel c) with the channel fastest, so a ``Linear(588 -> D)`` on patchified
pixels equals a stride-14 ``Conv2d`` on the image (the checkpoint stores the patch embedding that way).

A position id says where a token sits on a fixed square table of ``max_per_side`` x ``max_per_side`` cells,
flattened row-major. Images keep their own aspect ratio ("native resolution"); only the ids tell the model
which row and column a token came from.
"""

from __future__ import annotations

import torch


def patchify(image: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(C, H, W) -> (H/p * W/p, p * p * C), tokens row-major, features ordered (p, q, c)."""
    c, h, w = image.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image of {h}x{w} cannot be cut into {p}x{p} patches: both sides must be multiples of {p}")
    grid = image.reshape(c, h // p, p, w // p, p)  # (c, rows, p, cols, q)
    grid = grid.permute(1, 3, 2, 4, 0)  # (rows, cols, p, q, c)
    return grid.reshape((h // p) * (w // p), p * p * c)  # (num_tokens, p*p*c)


def unpatchify(tokens: torch.Tensor, rows: int, cols: int, patch_size: int, channels: int) -> torch.Tensor:
    """(rows * cols, p * p * C) -> (C, rows * p, cols * p); the inverse of ``patchify``."""
    p = patch_size
    grid = tokens.reshape(rows, cols, p, p, channels)  # (rows, cols, p, q, c)
    grid = grid.permute(4, 0, 2, 1, 3)  # (c, rows, p, cols, q)
    return grid.reshape(channels, rows * p, cols * p)


def position_ids_extrapolate(height: int, width: int, patch_size: int, max_per_side: int) -> torch.Tensor:
    """Flattened ids ``row * max_per_side + col`` of every patch: a patch keeps its true (row, col).

    The stride is the *table's* width, not the image's: a 2x3-patch image gets [0, 1, 2, 70, 71, 72]
    on a 70-wide table. This is what the released BAGEL uses. Returns (rows * cols,) int64.
    """
    rows, cols = height // patch_size, width // patch_size
    row = torch.arange(rows)[:, None]  # (rows, 1)
    col = torch.arange(cols)[None, :]  # (1, cols)
    return (row * max_per_side + col).flatten()


def position_ids_interpolate(height: int, width: int, patch_size: int, max_per_side: int) -> torch.Tensor:
    """Flattened ids after stretching the patch grid over the whole table (supported, unused by the release).

    Patch ``i`` of ``n`` sits at the fraction ``i / n`` of the side, which falls into one of ``max_per_side``
    equal buckets, so any image spans the full table. The float32 torch steps below match the official
    numbers bit for bit. Returns (rows * cols,) int64.
    """
    rows, cols = height // patch_size, width // patch_size
    bucket_edges = torch.arange(1 / max_per_side, 1.0, 1 / max_per_side)  # (max_per_side - 1,)
    frac_row = torch.arange(0, 1 - 1e-6, 1 / rows)  # (rows,)
    frac_col = torch.arange(0, 1 - 1e-6, 1 / cols)  # (cols,)
    row = torch.bucketize(frac_row, bucket_edges, right=True)
    col = torch.bucketize(frac_col, bucket_edges, right=True)
    return (row[:, None] * max_per_side + col[None, :]).flatten()


def position_ids(height: int, width: int, patch_size: int, max_per_side: int, interpolate: bool = False):
    """Position ids of an image, checked against the table size."""
    rows, cols = height // patch_size, width // patch_size
    if rows < 1 or cols < 1:
        raise ValueError(f"image of {height}x{width} is smaller than one {patch_size}x{patch_size} patch")
    if not interpolate and (rows > max_per_side or cols > max_per_side):
        raise ValueError(
            f"image of {height}x{width} has {rows}x{cols} patches, more than the position table's "
            f"{max_per_side} per side ({max_per_side * patch_size} px): resize it first"
        )
    fn = position_ids_interpolate if interpolate else position_ids_extrapolate
    return fn(height, width, patch_size, max_per_side)


def image_position_ids(cfg, pixel_shape: tuple[int, int], kind: str) -> torch.Tensor:
    """The position ids of an image of ``pixel_shape`` (height, width) in pixels, as BAGEL (``cfg``) reads it,
    in training and in inference alike: ``"vit"`` -> its ViT patches (interpolated when
    ``cfg.interpolate_pos``), ``"vae"`` -> its latent tokens (one per ``cfg.latent_downsample`` pixels)."""
    height, width = pixel_shape
    if kind == "vit":
        return position_ids(height, width, cfg.vit.patch_size, cfg.vit_max_num_patch_per_side, cfg.interpolate_pos)
    if kind == "vae":
        return position_ids(height, width, cfg.latent_downsample, cfg.max_latent_size)
    raise ValueError(f"kind must be 'vit' or 'vae', got {kind!r}")
