"""Reading into a context: text and images appended to the KV cache of what the model has read.

A **context** is what the model has read: the keys and values of every layer (the KV cache) plus two
counters — ``kv_len`` (cached tokens) and ``rope`` (the next free 1D position). Three things can be appended:

* a text segment ``<|im_start|> text <|im_end|>`` — causal, one position per token;
* an image for understanding ``<|vision_start|> ViT tokens <|vision_end|>`` — bidirectional, one position
  for the whole block;
* an image as clean VAE latents (for editing), same wrapping; its latent tokens use the generation expert.

``Reader`` holds the model, its autoencoder, tokenizer and image transforms, and does the reading; the text
writer (``text_generation.py``) and the image drawer (``denoising.py``) each hold one (``engine.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from PIL import Image

from ..loading.tokenizer import SpecialTokens, wrap_text
from ..loading.transforms import ImageTransform
from ..model.autoencoder import AutoEncoder
from ..model.bagel import Bagel
from ..model.masks import KeyMask
from ..model.patchify import image_position_ids, patchify
from ..model.qwen2_mot import KV


@dataclass(frozen=True)
class Context:
    """What the model has read so far. Cached tensors are never changed in place, so copies may share them."""

    kv_len: int = 0  # tokens in the cache
    rope: int = 0  # next free 1D RoPE position
    past: tuple[KV, ...] | None = None  # per layer: keys, values of shape (1, num_kv_heads, kv_len, head_dim)


class ContextFull(ValueError):
    """The sequence would outgrow the model's positions (``max_position_embeddings``); nothing was added."""


class Reader:
    """The model, its autoencoder and tokenizer, and reading text and images into a ``Context``."""

    def __init__(self, model: Bagel, ae: AutoEncoder, tokenizer, special: SpecialTokens, *,
                 vae_transform: ImageTransform | None = None, vit_transform: ImageTransform | None = None):
        self.model, self.ae, self.tokenizer, self.special = model, ae, tokenizer, special
        cfg = model.config
        max_gen = cfg.max_latent_size * cfg.latent_downsample
        vit_max = cfg.vit_max_num_patch_per_side * cfg.vit.patch_size
        # The official transforms, (1024, 512, 16) and (980, 224, 14), capped by what this model's tables cover.
        self.vae_transform = vae_transform or ImageTransform(min(1024, max_gen), min(512, max_gen),
                                                             cfg.latent_downsample)
        self.vit_transform = vit_transform or ImageTransform(min(980, vit_max), min(224, vit_max),
                                                             cfg.vit.patch_size)

    @property
    def device(self):  # where new rows are made: the device of the token embedding
        return self.model.language_model.model.embed_tokens.weight.device

    @property
    def dtype(self):
        return self.model.language_model.model.embed_tokens.weight.dtype

    def forward_rows(self, ctx: Context, rows: torch.Tensor, positions: torch.Tensor, gen_mask, causal: bool):
        """Run new rows (L, D) after ``ctx``'s cache. Returns hidden (L, D) and the context with them cached."""
        n = rows.shape[0]
        if int(positions.max()) >= self.model.config.llm.max_position_embeddings:
            raise ContextFull(f"the context would need position {int(positions.max())}, beyond the model's "
                              f"{self.model.config.llm.max_position_embeddings}: shorten the prompt")
        allowed = KeyMask(torch.ones(1, ctx.kv_len + n, dtype=torch.bool), n, causal, self.device)
        gen = None if gen_mask is None else gen_mask[None]
        hidden, kvs = self.model.hidden_states(rows[None].to(self.dtype), gen, positions[None], allowed,
                                               list(ctx.past) if ctx.past else None)
        return hidden[0], Context(ctx.kv_len + n, ctx.rope, tuple(kvs))

    def marker_rows(self) -> torch.Tensor:
        """The embeddings of ``<|vision_start|>`` and ``<|vision_end|>``: (2, D)."""
        ids = torch.tensor([self.special.start_of_image, self.special.end_of_image], device=self.device)
        return self.model.embed_text(ids)

    def add_text(self, ctx: Context, text: str) -> Context:
        """Append ``<|im_start|> text <|im_end|>``, causally, positions rope .. rope + n - 1."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        ids = torch.tensor(wrap_text(self.tokenizer, self.special, text), device=self.device)
        positions = ctx.rope + torch.arange(len(ids), device=self.device)
        _, new = self.forward_rows(ctx, self.model.embed_text(ids), positions, None, causal=True)
        return replace(new, rope=ctx.rope + len(ids))

    def add_vit_image(self, ctx: Context, pixels: torch.Tensor) -> Context:
        """Append an image for understanding: (3, H, W) in [-1, 1], sides multiples of the ViT patch."""
        cfg = self.model.config
        patches = patchify(pixels, cfg.vit.patch_size).to(self.device, self.dtype)  # (n, 588)
        ids = image_position_ids(cfg, pixels.shape[1:], "vit").to(self.device)
        tokens = self.model.embed_vit(patches, ids, [len(ids)])  # (n, D)
        start, end = self.marker_rows()
        rows = torch.cat([start[None], tokens, end[None]])  # (n + 2, D)
        positions = torch.full((len(rows),), ctx.rope, device=self.device)  # the whole block shares one position
        _, new = self.forward_rows(ctx, rows, positions, None, causal=False)
        return replace(new, rope=ctx.rope + 1)

    def add_vae_image(self, ctx: Context, pixels: torch.Tensor, generator: torch.Generator | None = None) -> Context:
        """Append an image as clean latents (t = 0), routed to the generation expert; markers stay und."""
        cfg = self.model.config
        ae_device = next(self.ae.parameters()).device
        latent = self.ae.encode(pixels[None].to(ae_device), generator=generator)[0]  # (16, H/8, W/8)
        tokens = patchify(latent, cfg.latent_patch_size).to(self.device)  # (h*w, 64)
        ids = image_position_ids(cfg, pixels.shape[1:], "vae").to(self.device)
        rows = self.latent_rows(tokens, torch.zeros(1, device=self.device), ids, self.marker_rows())
        positions = torch.full((len(rows),), ctx.rope, device=self.device)
        _, new = self.forward_rows(ctx, rows, positions, self.generation_mask(len(ids)), causal=False)
        return replace(new, rope=ctx.rope + 1)

    def add_image(self, ctx: Context, image: Image.Image, vae: bool = True, vit: bool = True,
                  generator: torch.Generator | None = None) -> Context:
        """Append a PIL image: as VAE latents (if ``vae``), then as ViT tokens (if ``vit``)."""
        if vae:
            ctx = self.add_vae_image(ctx, self.vae_transform(image), generator)
        if vit:
            ctx = self.add_vit_image(ctx, self.vit_transform(image))
        return ctx

    def latent_rows(self, x: torch.Tensor, t: torch.Tensor, ids: torch.Tensor, markers: torch.Tensor):
        """``<|vision_start|>`` + latent tokens (N, 64) embedded at flow time t + ``<|vision_end|>``."""
        start, end = markers  # (2, D) marker embeddings, computed once by the caller
        tokens = self.model.embed_latents(x.to(self.dtype), t.to(self.dtype), ids)  # (N, D)
        return torch.cat([start[None], tokens, end[None]])  # (N + 2, D)

    def generation_mask(self, n: int) -> torch.Tensor:
        """(n + 2,) True for the n latent tokens (generation expert), False for the two markers."""
        mask = torch.ones(n + 2, dtype=torch.bool, device=self.device)
        mask[0] = mask[-1] = False  # the two markers use the understanding expert
        return mask
