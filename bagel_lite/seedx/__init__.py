"""SEED-X beside BAGEL: the other road from an LLM to pixels, at toy scale on micro-BAGEL's parts.

BAGEL draws *inside* the LLM: latent tokens pass through the generation expert and come out as velocities.
SEED-X (Tencent ARC) keeps the LLM and the image generator apart and joins them through ViT embeddings:

    image --ViT--> N pooled embeddings --de-tokenizer (resampler + SDXL)--> image          (reconstruction)
    caption --LLM + N query tokens--> output head --> N embeddings --de-tokenizer--> image   (generation)

Modules, in reading order: ``visual_tokenizer`` (frozen ViT, shift-and-stitch, pooling to N),
``resampler`` (learnable queries + cross-attention), ``detokenizer`` (the conditional flow-matching
denoiser and its sampler), ``llm`` (LoRA, query tokens, output head), ``road`` (the assembled model, loaded
from shipped weights), ``train`` (``python -m bagel_lite.seedx ablate``: every part from scratch, then the
measurements).
"""

from __future__ import annotations

from .road import CHECKPOINT, SeedX, load
from .visual_tokenizer import N_CHOICES

__all__ = ["CHECKPOINT", "N_CHOICES", "SeedX", "load"]
