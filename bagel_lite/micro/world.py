"""A tiny synthetic world in which a tiny BAGEL can learn to understand, draw and edit.

Every scene is a 64x64 white canvas holding at most one shape, described by four attributes:

* shape:    circle, square, triangle
* colour:   red, green, blue, yellow, purple, orange
* position: left, right, top, bottom, center   (with a few pixels of jitter)
* size:     small, large

From a scene the world makes a caption ("a large red circle on the left"), question/answer pairs
("what color is the circle?" -> "red") and edit triples (source scene, instruction, target scene):
recolour, move, resize, remove and add. Everything is a pure function of a seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
BACKGROUND = (255, 255, 255)
SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 200, 20),
    "purple": (140, 40, 170),
    "orange": (245, 120, 20),
}
POSITIONS = {"left": (16, 32), "right": (48, 32), "top": (32, 16), "bottom": (32, 48), "center": (32, 32)}
SIZES = {"small": 7, "large": 12}  # half-width in pixels
POSITION_PHRASE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
                   "center": "in the center"}


@dataclass(frozen=True)
class Scene:
    """One shape on the canvas, or an empty canvas (``shape is None``)."""

    shape: str | None
    color: str | None = None
    position: str | None = None
    size: str | None = None
    jitter: tuple[int, int] = (0, 0)

    @property
    def empty(self) -> bool:
        return self.shape is None


EMPTY = Scene(None)


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, *, fill) -> None:
    """Draw one shape of half-width ``r`` whose bounding box is centred on (cx, cy)."""
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        s = round(r * 0.9)  # a little smaller, so a square looks as big as the circle
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    else:  # a triangle pointing up
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)


def render(scene: Scene) -> Image.Image:
    """Draw a scene as a 64x64 RGB image."""
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    if not scene.empty:
        cx, cy = POSITIONS[scene.position]
        draw_shape(ImageDraw.Draw(image), scene.shape, cx + scene.jitter[0], cy + scene.jitter[1],
                   SIZES[scene.size], fill=COLORS[scene.color])
    return image


JITTER = (-2, 0, 2)  # pixels of offset from a position's anchor, per axis


def random_scene(rng: random.Random) -> Scene:
    return Scene(rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(list(POSITIONS)), rng.choice(list(SIZES)),
                 (rng.choice(JITTER), rng.choice(JITTER)))


# Held-out scenes: those drawn with these two jitter offsets. Training never renders them (nor encodes them, nor
# asks about them); evaluation draws only from them, so every score is measured on images the model never saw.
# Each held-out scene differs from some training scene only by a 2-4 pixel shift, and every shape, colour,
# position and size occurs on both sides. Edits keep the jitter, so an edit's source and target are held out
# together (``add`` starts from the empty canvas, which both sides share).
HELD_OUT_JITTER = frozenset({(2, -2), (-2, 2)})


def is_held_out(scene: Scene) -> bool:
    return not scene.empty and scene.jitter in HELD_OUT_JITTER


def training_scene(rng: random.Random) -> Scene:
    """A random scene that is not held out (7 of the 9 jitter offsets)."""
    offsets = sorted((dx, dy) for dx in JITTER for dy in JITTER if (dx, dy) not in HELD_OUT_JITTER)
    return replace(random_scene(rng), jitter=rng.choice(offsets))


def held_out_scene(rng: random.Random) -> Scene:
    """A random held-out scene (one of the two held-out jitter offsets)."""
    return replace(random_scene(rng), jitter=rng.choice(sorted(HELD_OUT_JITTER)))


def all_scenes() -> list[Scene]:
    """Every scene the world can draw (the empty canvas first): 1 + 3 * 6 * 5 * 2 * 9 = 1621."""
    return [EMPTY] + [Scene(sh, c, p, sz, (dx, dy)) for sh in SHAPES for c in COLORS for p in POSITIONS
                      for sz in SIZES for dx in JITTER for dy in JITTER]


def caption(scene: Scene, rng: random.Random | None = None, size: bool | None = None) -> str:
    """'a large red circle on the left'. The size word is left out half of the time when ``rng`` is given;
    ``size=True`` / ``False`` puts it in / leaves it out regardless."""
    if size is None:
        size = rng is None or rng.random() >= 0.5
    size = f"{scene.size} " if size else ""
    return f"a {size}{scene.color} {scene.shape} {POSITION_PHRASE[scene.position]}"


# --- questions --------------------------------------------------------------------------------------------

QUESTIONS = {
    "color": "what color is the {shape}?",
    "shape": "what shape is this?",
    "position": "where is the {shape}?",
    "size": "is the {shape} small or large?",
}


def question_answer(scene: Scene, rng: random.Random, weights: dict | None = None,
                    kind: str | None = None) -> tuple[str, str, str]:
    """(kind, question, one-word answer) about a non-empty scene; ``weights`` favour some kinds of question,
    ``kind`` asks that one."""
    kinds = list(QUESTIONS)
    if kind is None:
        kind = rng.choices(kinds, weights=[weights[k] for k in kinds])[0] if weights else rng.choice(kinds)
    answer = {"color": scene.color, "shape": scene.shape, "position": scene.position, "size": scene.size}[kind]
    return kind, QUESTIONS[kind].format(shape=scene.shape), answer


# --- edits ------------------------------------------------------------------------------------------------

EDIT_KINDS = ("recolor", "move", "resize", "remove", "add")


def instruction(kind: str, source: Scene, target: Scene) -> str:
    if kind == "recolor":
        return f"make the {source.shape} {target.color}"
    if kind == "move":
        return f"move the {source.shape} to the {target.position}"
    if kind == "resize":
        return f"make the {source.shape} {target.size}"
    if kind == "remove":
        return f"remove the {source.shape}"
    if kind == "add":
        return f"add {caption(target)}"
    raise ValueError(f"unknown edit kind {kind!r}; use one of {EDIT_KINDS}")


def edit(scene: Scene, rng: random.Random, kind: str | None = None) -> tuple[str, Scene, str, Scene]:
    """(kind, source, instruction, target) for a non-empty ``scene``; ``add`` starts from an empty canvas."""
    kind = kind or rng.choice(EDIT_KINDS)
    source, target = scene, scene
    if kind == "recolor":
        target = replace(scene, color=rng.choice([c for c in COLORS if c != scene.color]))
    elif kind == "move":
        target = replace(scene, position=rng.choice([p for p in POSITIONS if p != scene.position]))
    elif kind == "resize":
        target = replace(scene, size="small" if scene.size == "large" else "large")
    elif kind == "remove":
        target = EMPTY
    elif kind == "add":
        source = EMPTY
    return kind, source, instruction(kind, source, target), target


def corpus() -> list[str]:
    """Every string the world can produce (for training the tokenizer)."""
    texts = []
    for shape in SHAPES:
        for color in COLORS:
            for position in POSITIONS:
                for size in SIZES:
                    s = Scene(shape, color, position, size)
                    texts += [caption(s), f"a {color} {shape} {POSITION_PHRASE[position]}"]
                    texts += [q.format(shape=shape) for q in QUESTIONS.values()]
                    texts += [color, shape, position, size]
                    texts += [instruction("recolor", s, replace(s, color=c)) for c in COLORS]
                    texts += [instruction("move", s, replace(s, position=p)) for p in POSITIONS]
                    texts += [instruction(k, s, s) for k in ("resize", "remove")]
                    texts.append(instruction("add", EMPTY, s))
    return texts


def to_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.uint8)
