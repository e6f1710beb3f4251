"""Interleaved inference: reading text and images into a KV cache, then writing text or drawing an image.

``Engine`` is the three rooms of inference put together, each in its own module:

* ``contexts.py`` — ``Context`` (what the model has read) and reading text, ViT images and VAE images into it;
* ``text_generation.py`` — writing text after a context, token by token;
* ``denoising.py`` — drawing an image after the three contexts of guidance, by ``flow.sample``.

``conversation.py`` keeps those contexts across the turns of a conversation; ``pipeline.py`` gives the
one-line API on top.
"""

from __future__ import annotations

from .denoising import ImageDrawer
from .text_generation import TextWriter


class Engine(TextWriter, ImageDrawer):
    """The model, its autoencoder and tokenizer, and the operations of interleaved inference: ``add_text``,
    ``add_image`` (reading), ``generate_text`` (writing), ``generate_image`` and ``decode_image`` (drawing)."""
