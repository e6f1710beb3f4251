"""Deterministic, explainable checks of micro-world images.

``detect`` reads a 64x64 image back into a scene with four pixel rules a learner can verify by eye:

* object pixels: those far enough from the white background;
* colour: the palette colour nearest to the mean colour of the object pixels;
* position: the anchor (left, right, top, bottom, center) nearest to the centroid;
* size and shape: the object's area (small vs large) and how much of its bounding box it fills
  (a square fills ~100 %, a circle ~79 %, a triangle ~50 %).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .world import COLORS, POSITIONS, SIZES, Scene, to_array

OBJECT_THRESHOLD = 90  # summed |RGB - white| above which a pixel belongs to the object
MIN_PIXELS = 12  # fewer object pixels than this: the canvas is empty


@dataclass(frozen=True)
class Detection:
    scene: Scene
    pixels: int  # object pixels found
    fill: float  # object area / bounding-box area


def detect(image: Image.Image) -> Detection:
    arr = to_array(image).astype(np.float64)  # (64, 64, 3)
    mask = np.abs(arr - 255.0).sum(-1) > OBJECT_THRESHOLD
    n = int(mask.sum())
    if n < MIN_PIXELS:
        return Detection(Scene(None), n, 0.0)
    mean = arr[mask].mean(0)
    color = min(COLORS, key=lambda c: float(((np.array(COLORS[c]) - mean) ** 2).sum()))
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean(), xs.mean()
    position = min(POSITIONS, key=lambda p: (POSITIONS[p][0] - cx) ** 2 + (POSITIONS[p][1] - cy) ** 2)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    fill = n / box
    shape = "square" if fill > 0.9 else "circle" if fill > 0.64 else "triangle"
    # area of a small vs a large circle: pi * 7^2 ~ 154, pi * 12^2 ~ 452; split on the geometric mean
    split = np.pi * SIZES["small"] * SIZES["large"]
    size = "large" if n > split else "small"
    return Detection(Scene(shape, color, position, size), n, fill)


def matches(image: Image.Image, target: Scene, attributes=("shape", "color", "position", "size")) -> dict:
    """Per attribute, whether the image shows the target's value (an empty target: whether it is empty)."""
    found = detect(image).scene
    if target.empty:
        return {"empty": found.empty}
    return {a: getattr(found, a) == getattr(target, a) for a in attributes}
