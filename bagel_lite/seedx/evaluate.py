"""Measuring the toy SEED-X on scenes its training never saw, with the micro-world evaluator.

* ``reconstruction_scores`` — image -> N embeddings -> de-tokenizer -> image: pixel error and whether the
  evaluator reads the same shape, colour, position and size back;
* ``regression_scores`` — caption -> LLM -> N embeddings, against the true embeddings: relative squared error
  (1.0 = no better than always predicting the average scene), next to its *floor*: the error of the best
  caption-only guess, the mean over the training scenes with that caption (a caption does not say the
  2-px jitter, so no regressor can reach 0);
* ``t2i_scores`` — caption -> the whole road -> image, scored like micro-BAGEL's text-to-image.
"""

from __future__ import annotations

import torch

from ..micro.evaluate import attribute_accuracy
from ..micro.world import Scene, caption, render
from .road import SeedX
from .visual_tokenizer import pool, vit_grid


def split(seed: int, n_test: int) -> tuple[list[Scene], list[int], list[int]]:
    """Every non-empty scene, and a seeded split of their indices into (train, test)."""
    import random

    from ..micro.world import all_scenes

    scenes = all_scenes()[1:]
    order = list(range(len(scenes)))
    random.Random(seed).shuffle(order)
    return scenes, sorted(order[n_test:]), sorted(order[:n_test])


def held_out_scenes(seedx: SeedX) -> list[Scene]:
    """The held-out scenes of the split ``seedx`` was trained with."""
    scenes, _, test = split(seedx.settings["split_seed"], seedx.settings["test_scenes"])
    return [scenes[i] for i in test]


def reconstruction_scores(seedx: SeedX, scenes: list[Scene], n: int, mode: str = "kv", seed: int = 0) -> dict:
    """Mean absolute pixel error (0..255) of the reconstructions, and the evaluator's attribute accuracy."""
    originals = [render(sc) for sc in scenes]
    images = seedx.reconstruct(originals, n, mode, seed)
    mae = float(((seedx.pixels(images) - seedx.pixels(originals)).abs() * 127.5).mean())  # (B, 3, 64, 64) each
    return {"mae": mae, **attribute_accuracy(images, scenes)}


class CaptionFloor:
    """Per full caption, the mean standardized embeddings of the training scenes that carry it."""

    def __init__(self, seedx: SeedX):
        scenes, train, _ = split(seedx.settings["split_seed"], seedx.settings["test_scenes"])
        self.seedx, self.captions = seedx, [caption(scenes[i]) for i in train]
        with torch.no_grad():  # the stitched ViT grid of every training scene, once: (S_train, 8, 8, D)
            self.grid = vit_grid(seedx.pipe.model, seedx.pixels([render(scenes[i]) for i in train]))
        self._means: dict[int, dict[str, torch.Tensor]] = {}

    def means(self, n: int) -> dict[str, torch.Tensor]:
        if n not in self._means:
            emb = self.seedx.standardize(pool(self.grid, n), n)  # (S_train, n, D)
            groups: dict[str, list[int]] = {}
            for i, text in enumerate(self.captions):
                groups.setdefault(text, []).append(i)
            self._means[n] = {text: emb[rows].mean(0) for text, rows in groups.items()}
        return self._means[n]

    def __call__(self, scenes: list[Scene], n: int) -> torch.Tensor:
        means = self.means(n)
        unseen = [caption(sc) for sc in scenes if caption(sc) not in means]
        if unseen:
            raise ValueError(f"no training scene carries the caption {unseen[0]!r}: the floor needs at least one")
        return torch.stack([means[caption(sc)] for sc in scenes])  # (B, n, D)


def regression_scores(seedx: SeedX, scenes: list[Scene], n: int, head: str = "cross",
                      floor: CaptionFloor | None = None) -> dict:
    """Relative squared error of the LLM's embeddings for the scenes' full captions (and the floor)."""
    target = seedx.embeddings([render(sc) for sc in scenes], n)  # (B, n, D)
    pred = seedx.regress([caption(sc) for sc in scenes], n, head)
    spread = float(target.var(0).mean())  # the error of always predicting the average of these scenes
    scores = {"rel_mse": float(((pred - target) ** 2).mean()) / spread}
    if floor is not None:
        scores["floor"] = float(((floor(scenes, n) - target) ** 2).mean()) / spread
    return scores


def t2i_scores(seedx: SeedX, scenes: list[Scene], n: int | None = None, head: str = "cross", seed: int = 0) -> dict:
    """Text-to-image through the whole road for the scenes' full captions, scored by the evaluator."""
    return attribute_accuracy(seedx.generate([caption(sc) for sc in scenes], n, head, seed), scenes)
