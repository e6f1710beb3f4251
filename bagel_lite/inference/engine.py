"""Interleaved inference: one engine that reads text and images into a KV cache, writes text and draws images.

``Engine`` holds the model, its autoencoder, tokenizer and image transforms, and is made of three parts, each
in its own module and each holding the same ``Reader``:

* ``contexts.py`` — ``Reader``: a ``Context`` (what the model has read) and reading text, ViT images and VAE
  images into it;
* ``text_generation.py`` — ``TextWriter``: writing text after a context, token by token;
* ``denoising.py`` — ``ImageDrawer``: drawing an image after the three contexts of guidance, by ``flow.sample``.

Its own three verbs are the whole of interleaved inference: ``read``, ``write``, ``draw``.
``conversation.py`` keeps contexts across the turns of a conversation; ``pipeline.py`` gives the one-line
API on top.
"""

from __future__ import annotations

import torch
from PIL import Image

from ..loading.tokenizer import SpecialTokens
from ..loading.transforms import ImageTransform
from ..model.autoencoder import AutoEncoder
from ..model.bagel import Bagel
from .contexts import Context, Reader
from .denoising import ImageDrawer
from .text_generation import TextWriter


class Engine:
    """The model, its autoencoder, tokenizer and image transforms, and the three verbs of interleaved inference:
    ``read`` (text or an image into a context), ``write`` (text after a context), ``draw`` (an image after the
    contexts of guidance). ``reader``, ``writer`` and ``drawer`` are its parts, for a closer look."""

    def __init__(self, model: Bagel, ae: AutoEncoder, tokenizer, special: SpecialTokens, *,
                 vae_transform: ImageTransform | None = None, vit_transform: ImageTransform | None = None):
        self.reader = Reader(model, ae, tokenizer, special, vae_transform=vae_transform,
                             vit_transform=vit_transform)
        self.writer = TextWriter(self.reader)
        self.drawer = ImageDrawer(self.reader)
        self.model, self.ae, self.tokenizer, self.special = model, ae, tokenizer, special
        self.vae_transform, self.vit_transform = self.reader.vae_transform, self.reader.vit_transform
        self.write = self.writer.write  # text after a context -> Written (ids, finished, text)
        self.draw = self.drawer.draw  # an image after the contexts of guidance -> Drawn (latents, image, shape)

    def read(self, ctx: Context, item: str | Image.Image, *, vae: bool = True, vit: bool = True,
             generator: torch.Generator | None = None) -> Context:
        """``ctx`` with ``item`` read after it: a string as ``<|im_start|> text <|im_end|>``; a PIL image as VAE
        latents (if ``vae``; encoded with ``generator``'s noise) and then ViT tokens (if ``vit``)."""
        if isinstance(item, str):
            return self.reader.add_text(ctx, item)
        if isinstance(item, Image.Image):
            return self.reader.add_image(ctx, item, vae=vae, vit=vit, generator=generator)
        raise TypeError(f"read takes a string or a PIL image, got {type(item).__name__}")

    def image_shape(self, image_shape=None, source: Image.Image | None = None) -> tuple[int, int]:
        """The size an image is drawn at (``ImageDrawer.image_shape``: given, an edit's source's, or the default)."""
        return self.drawer.image_shape(image_shape, source)

    def decode_image(self, latents: torch.Tensor, image_shape: tuple[int, int]) -> Image.Image:
        """(N, 64) latent tokens -> the picture (for previews of the model's current guess)."""
        return self.drawer.decode_image(latents, image_shape)

    def decode_latents(self, latents: torch.Tensor, image_shape: tuple[int, int]) -> torch.Tensor:
        """(N, 64) latent tokens -> (1, 3, H, W) in about [-1, 1]."""
        return self.drawer.decode_latents(latents, image_shape)
