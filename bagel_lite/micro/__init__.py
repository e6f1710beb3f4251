"""Micro-BAGEL: a BAGEL of a few million parameters, trained on a CPU in a synthetic world of shapes.

    from bagel_lite import micro
    pipe = micro.load()                                   # the shipped checkpoint, official folder layout
    pipe.generate("a red circle on the left").image
    pipe.answer(image, "what color is the circle?")

``python -m bagel_lite.micro train`` trains it from scratch; ``python -m bagel_lite.micro evaluate`` scores it.
"""

from __future__ import annotations

from pathlib import Path

CHECKPOINT = Path(__file__).resolve().parent / "checkpoint"


def load(folder: str | Path = CHECKPOINT, device: str = "cpu"):
    """The micro model as a ``Pipeline`` (64x64 images for both towers)."""
    import torch

    from ..inference.pipeline import Pipeline
    from .data import micro_transform

    return Pipeline.from_folder(folder, device=device, dtype=torch.float32, vae_transform=micro_transform(),
                                vit_transform=micro_transform())
