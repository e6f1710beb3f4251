"""SEED-X's visual tokenizer at toy scale: a frozen ViT, then average pooling down to N embeddings.

SEED-X encodes an image with Qwen-VL's ViT-G (448 px, patch 14) and an attention pool into a 16x16 grid of
4096-dim embeddings, then *average-pools* that grid to 64 embeddings (``vit_down``). Those N embeddings are
what its de-tokenizer draws from and what its LLM learns to regress.

Here the frozen ViT is micro-BAGEL's own SigLIP tower, trained for understanding. It sees 16-px patches, 16 per
64x64 image. To have a larger grid to pool from (SEED-X pools 256 -> 64), we run it four times on the image
shifted by half a patch to the left and/or up and interleave the four 4x4 grids (*shift-and-stitch*): an 8x8
grid of 64-dim embeddings, each describing a 16-px window at an 8-px stride. Pooling that grid gives
N = 64, 16, 4 or 1 embeddings.

One difference from SEED-X, on purpose: SEED-X's code pools the *flattened* 256-token sequence with
``avg_pool1d(kernel_size=4)``, i.e. 1x4 windows along each row of its 16x16 grid. We pool square windows
of the 2D grid, as "pool the grid down to 8x8" reads; the lesson (fewer, coarser embeddings) is the same.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..model.bagel import Bagel
from ..model.patchify import image_position_ids, patchify

GRID = 8  # the stitched grid is GRID x GRID embeddings
N_CHOICES = (1, 4, 16, 64)  # how many pooled embeddings the ablation compares


def check_n(n: int) -> int:
    """N must be a square number that divides the grid: 1, 4, 16 or 64."""
    side = math.isqrt(n) if isinstance(n, int) and n > 0 else 0
    if side == 0 or side * side != n or GRID % side:
        raise ValueError(f"N = {n!r} embeddings cannot be pooled from the {GRID}x{GRID} grid; use one of {N_CHOICES}")
    return n


@torch.no_grad()
def vit_grid(model: Bagel, pixels: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Frozen ViT features on a stitched grid: (B, 3, 64, 64) in [-1, 1] -> (B, 8, 8, vit_hidden).

    Embedding (2i + a, 2j + b) comes from the image shifted up by ``8a`` and left by ``8b`` pixels (white
    fills the uncovered border), patch (i, j). These are the ViT's final hidden states (after its last
    LayerNorm), before micro-BAGEL's connector: the features SEED-X would pool.
    """
    vit = model.config.vit
    p, side = vit.patch_size, GRID // 2
    b, _, h, w = pixels.shape
    if (h, w) != (side * p, side * p):
        raise ValueError(f"the visual tokenizer expects {side * p}x{side * p} images, got {h}x{w}")
    half = p // 2
    padded = F.pad(pixels, (0, half, 0, half), value=1.0)  # (B, 3, h + 8, w + 8): white beyond the border
    ids = image_position_ids(model.config, (h, w), "vit")  # (16,): as BAGEL reads an image
    grid = pixels.new_empty(b, GRID, GRID, vit.hidden_size)
    for a in (0, 1):
        for c in (0, 1):
            shifted = padded[:, :, a * half:a * half + h, c * half:c * half + w]  # (B, 3, h, w)
            for start in range(0, b, batch):
                chunk = shifted[start:start + batch]
                patches = torch.vmap(lambda img: patchify(img, p))(chunk).flatten(0, 1)  # (n * 16, p*p*3)
                feats = model.vit_model(patches, ids.repeat(len(chunk)), [len(ids)] * len(chunk))
                grid[start:start + batch, a::2, c::2] = feats.view(len(chunk), side, side, -1)
    return grid


def pool(grid: torch.Tensor, n: int) -> torch.Tensor:
    """Average-pool a (B, 8, 8, D) grid to (B, n, D): square windows, row-major order (n = 1, 4, 16, 64)."""
    side = math.isqrt(check_n(n))
    x = grid.permute(0, 3, 1, 2)  # (B, D, 8, 8)
    x = F.adaptive_avg_pool2d(x, side)  # (B, D, side, side): each cell averages (8/side)^2 embeddings
    return x.flatten(2).transpose(1, 2)  # (B, n, D)


def gray_image(batch: int = 1) -> torch.Tensor:
    """The all-zero pixel tensor (mid-gray): SEED-X's *negative* image for classifier-free guidance."""
    return torch.zeros(batch, 3, GRID * 8, GRID * 8)


def standardize(pooled: torch.Tensor, stats: dict[str, torch.Tensor], n: int) -> torch.Tensor:
    """Pooled embeddings (.., n, D) in units of the training scenes' spread: ``(x - mean) / std`` per slot and
    channel, with ``stats`` holding ``n{N}.mean`` and ``n{N}.std`` (upcast to float32 if stored smaller)."""
    return (pooled - stats[f"n{n}.mean"].float()) / stats[f"n{n}.std"].float()
