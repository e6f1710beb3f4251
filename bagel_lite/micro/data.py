"""Micro-BAGEL's model size, tokenizer and training samples.

The micro model is BAGEL with every width shrunk: a 4-layer MoT decoder of width 128, a 2-layer ViT on
16-pixel patches, a FLUX-family autoencoder of width 32, 64x64 images. Its tokenizer is a byte-level BPE
trained on the micro world's sentences and stored in Qwen2's file format (``vocab.json`` + ``merges.txt``),
so the standard loader reads it like the real one.
"""

from __future__ import annotations

import json
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..loading.tokenizer import BOS, EOS, VISION_END, VISION_START, add_special_tokens
from ..loading.transforms import ImageTransform
from ..model.config import AEConfig, BagelConfig, LLMConfig, ViTConfig
from ..training.packing import Text, VaeImage, VitImage
from .world import (
    BACKGROUND,
    EDIT_KINDS,
    HELD_OUT_JITTER,
    SIZE,
    Scene,
    caption,
    corpus,
    edit,
    question_answer,
    render,
    training_scene,
)


@dataclass(frozen=True)
class MicroSize:
    """The widths that make micro-BAGEL micro (the quick recipe trains the small one, the shipped run v2)."""

    hidden: int = 256  # LLM width (each of the two experts)
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 768
    vit_hidden: int = 96
    vit_layers: int = 3
    vit_heads: int = 3
    ae_ch: int = 32  # autoencoder width (FLUX's is 128)


SMALL = MicroSize(hidden=128, layers=4, heads=4, kv_heads=2, intermediate=384, vit_hidden=64, vit_layers=2,
                  vit_heads=2, ae_ch=32)


def micro_config(vocab_size: int, size: MicroSize = SMALL) -> BagelConfig:
    return BagelConfig(
        llm=LLMConfig(hidden_size=size.hidden, intermediate_size=size.intermediate, num_hidden_layers=size.layers,
                      num_attention_heads=size.heads, num_key_value_heads=size.kv_heads, vocab_size=vocab_size,
                      max_position_embeddings=1024),
        vit=ViTConfig(hidden_size=size.vit_hidden, intermediate_size=2 * size.vit_hidden,
                      num_hidden_layers=size.vit_layers, num_attention_heads=size.vit_heads, patch_size=16,
                      image_size=SIZE),
        vae=AEConfig(ch=size.ae_ch, ch_mult=(1, 2, 2, 2), num_res_blocks=1),
        max_latent_size=SIZE // 16,
        vit_max_num_patch_per_side=SIZE // 16,
    )


def micro_transform() -> ImageTransform:
    """Both towers see 64x64 images: 4x4 ViT patches of 16 px, 4x4 latent tokens of 16 px."""
    return ImageTransform(SIZE, SIZE, 16)


def build_tokenizer(vocab_size: int = 384):
    """Train a byte-level BPE on the world's sentences; return a Qwen2Tokenizer with BAGEL's markers."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = sorted(set(corpus()))
    bpe.train_from_iterator(texts * 4, trainer)
    with tempfile.TemporaryDirectory() as tmp:
        bpe.model.save(tmp)  # vocab.json + merges.txt, Qwen2's files
        vocab = json.loads((Path(tmp) / "vocab.json").read_text())
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
        tokenizer = Qwen2Tokenizer.from_pretrained(tmp)
    special = add_special_tokens(tokenizer)
    assert tokenizer.convert_ids_to_tokens([special.bos, special.eos]) == [BOS, EOS]
    assert tokenizer.convert_ids_to_tokens([special.start_of_image]) == [VISION_START]
    assert tokenizer.convert_ids_to_tokens([special.end_of_image]) == [VISION_END]
    return tokenizer, special


# --- samples ----------------------------------------------------------------------------------------------

TASKS = ("t2i", "vqa", "edit")
# Training asks the kinds of question that are slow to learn (where? which shape?) more often; evaluation asks
# every kind equally. Reading *where* a shape is from the ViT tokens sits on a long plateau before it is learned.
QUESTION_WEIGHTS = {"color": 0.2, "shape": 0.3, "position": 0.35, "size": 0.15}


class SampleMaker:
    """Turns random *training* scenes (never the held-out ones) into samples (lists of items) for the three tasks.

    ``latent_of(scene)`` returns a *sampled, scaled* latent (16, 8, 8) of the scene's image (train.py reads it
    from a precomputed posterior table); ViT pixels are rendered directly. ``question_weights`` and
    ``edit_weights`` favour the kinds that are slow to learn.

    ``question_shift`` > 0 moves the picture of a question by a random -shift..+shift pixels per axis
    (white comes in at the edge; ``question_move``). Without it the ViT learns each training scene's exact
    pixels: shape questions reach 100 % on training scenes and stay near 50 % on held-out scenes shifted by 2
    pixels. A move never draws a held-out picture; ``tests/test_micro.py`` checks that pixel for pixel.
    """

    def __init__(self, tokenizer, latent_of, *, transform: ImageTransform | None = None,
                 question_weights: dict | None = None, edit_weights: dict | None = None, question_shift: int = 0):
        self.tokenizer, self.latent_of = tokenizer, latent_of
        self.transform = transform or micro_transform()
        self.question_weights = question_weights or QUESTION_WEIGHTS
        self.edit_weights = edit_weights or {k: 1.0 for k in EDIT_KINDS}
        self.question_shift = question_shift

    def ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def pixels(self, scene, shift: tuple[int, int] = (0, 0)) -> torch.Tensor:
        return self.transform(shifted(render(scene), *shift))  # (3, 64, 64)

    def t2i(self, rng: random.Random) -> list:
        scene = training_scene(rng)
        return [Text(self.ids(caption(scene, rng)), drop_prob=0.1), VaeImage(self.latent_of(scene), noisy=True)]

    def vqa(self, rng: random.Random) -> list:
        scene = training_scene(rng)
        _, question, answer = question_answer(scene, rng, self.question_weights)
        shift = question_move(scene, self.question_shift, rng)
        return [VitImage(self.pixels(scene, shift)), Text(self.ids(question)), Text(self.ids(answer), loss=True)]

    def edit(self, rng: random.Random) -> list:
        kind = rng.choices(EDIT_KINDS, weights=[self.edit_weights[k] for k in EDIT_KINDS])[0]
        _, source, instruction, target = edit(training_scene(rng), rng, kind)
        return [VaeImage(self.latent_of(source), drop_prob=0.3), VitImage(self.pixels(source), drop_prob=0.3),
                Text(self.ids(instruction), drop_prob=0.1), VaeImage(self.latent_of(target), noisy=True)]

    def sample(self, task: str, rng: random.Random) -> list:
        return getattr(self, task)(rng)


def lands_on_held_out(scene: Scene, dx: int, dy: int) -> bool:
    """Whether ``scene``'s picture moved by (dx, dy) is a held-out scene's picture: the same shape drawn at the
    same anchor with a held-out jitter (anchors are 16 pixels apart, so no other scene can be hit)."""
    return not scene.empty and (scene.jitter[0] + dx, scene.jitter[1] + dy) in HELD_OUT_JITTER


def question_move(scene: Scene, k: int, rng: random.Random) -> tuple[int, int]:
    """A random move of up to ``k`` pixels per axis for a question's picture of ``scene``, drawn again while it
    would land on a held-out picture. With ``k`` = 1 that never happens (a held-out jitter is 2 pixels from
    every training one on some axis), so the draws are those of a plain ``randint`` pair."""
    while k:
        dx, dy = rng.randint(-k, k), rng.randint(-k, k)
        if not lands_on_held_out(scene, dx, dy):
            return dx, dy
    return 0, 0


def shifted(image: Image.Image, dx: int, dy: int) -> Image.Image:
    """``image`` moved ``dx`` pixels right and ``dy`` down on a white canvas of the same size."""
    if dx == 0 and dy == 0:
        return image
    out = Image.new("RGB", image.size, BACKGROUND)
    out.paste(image, (dx, dy))
    return out


def image_batch(scenes, transform: ImageTransform | None = None) -> torch.Tensor:
    """Render scenes into a (B, 3, 64, 64) batch in [-1, 1]."""
    transform = transform or micro_transform()
    return torch.stack([transform(render(s)) for s in scenes])
