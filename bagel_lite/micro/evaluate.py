"""Deterministic, explainable checks of micro-world images.

``detect`` reads a 64x64 image back into a scene with rules a learner can verify by eye:

* object pixels: those far from the white background; the shape's *core* is where that distance is at least
  half its maximum (this ignores the soft halo a decoder leaves around edges);
* colour: the palette colour nearest to the median colour of the core;
* position: the anchor (left, right, top, bottom, center) nearest to the core's centroid;
* shape: template matching — a circle, a square and a triangle of the core's area are drawn at its
  centroid, and the one overlapping the core best (intersection over union) wins;
* size: whether the core's area is nearer (in ratio) to that shape's small or large area.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..loading.transforms import tensor_to_pil
from ..workbook.viz import verdict_title
from .world import COLORS, POSITIONS, SHAPES, SIZE, SIZES, Scene, draw_shape, to_array

PRESENT_THRESHOLD = 90  # summed |RGB - white| above which a pixel is not background
MIN_PIXELS = 12  # fewer such pixels: the canvas is empty
AREA_PER_R2 = {"circle": np.pi, "square": 3.24, "triangle": 2.0}  # area / r^2 of each drawn shape


def _mask(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    canvas = Image.new("L", (SIZE, SIZE), 0)
    if shape == "triangle":
        cy -= r / 3  # the drawing is centred on the bounding box; the centroid sits r/3 lower
    draw_shape(ImageDraw.Draw(canvas), shape, cx, cy, r, fill=255)
    return np.asarray(canvas) > 0


def _area(shape: str, size: str) -> int:
    return int(_mask(shape, 32, 32, SIZES[size]).sum())


@dataclass(frozen=True)
class Detection:
    scene: Scene
    pixels: int  # core pixels
    iou: float  # overlap of the core with the winning template


def detect(image: Image.Image) -> Detection:
    arr = to_array(image).astype(np.float64)  # (64, 64, 3)
    dist = np.abs(arr - 255.0).sum(-1)  # (64, 64) distance from white
    if int((dist > PRESENT_THRESHOLD).sum()) < MIN_PIXELS:
        return Detection(Scene(None), 0, 0.0)
    core = dist >= 0.5 * dist.max()
    n = int(core.sum())
    median = np.median(arr[core], axis=0)
    color = min(COLORS, key=lambda c: float(((np.array(COLORS[c]) - median) ** 2).sum()))
    ys, xs = np.nonzero(core)
    cy, cx = ys.mean(), xs.mean()
    position = min(POSITIONS, key=lambda p: (POSITIONS[p][0] - cx) ** 2 + (POSITIONS[p][1] - cy) ** 2)

    def iou(shape):
        template = _mask(shape, cx, cy, float(np.sqrt(n / AREA_PER_R2[shape])))
        return (template & core).sum() / max((template | core).sum(), 1)

    scores = {shape: iou(shape) for shape in SHAPES}
    shape = max(scores, key=scores.get)
    small, large = _area(shape, "small"), _area(shape, "large")
    size = "large" if n > np.sqrt(small * large) else "small"
    return Detection(Scene(shape, color, position, size), n, float(scores[shape]))


def matches(image: Image.Image, target: Scene, attributes=("shape", "color", "position", "size")) -> dict:
    """Per attribute, whether the image shows the target's value (an empty target: whether it is empty)."""
    found = detect(image).scene
    if target.empty:
        return {"empty": found.empty}
    return {a: getattr(found, a) == getattr(target, a) for a in attributes}


# --- scoring a model --------------------------------------------------------------------------------------

ATTRIBUTES = ("shape", "color", "position", "size")


def attribute_accuracy(images, scenes) -> dict[str, float]:
    """Per attribute, the fraction of ``images`` that show their scene's value; "all": every attribute right."""
    if len(images) != len(scenes) or not scenes:
        raise ValueError(f"need one scene per image, got {len(images)} images and {len(scenes)} scenes")
    hits = {a: 0 for a in (*ATTRIBUTES, "all")}
    for image, scene in zip(images, scenes):
        found = matches(image, scene)
        for a in ATTRIBUTES:
            hits[a] += found[a]
        hits["all"] += all(found.values())
    return {a: v / len(scenes) for a, v in hits.items()}


def held_out_prompts(n: int, seed: int = 10_000) -> list[Scene]:
    """The scenes whose captions ``evaluate_model`` draws from (its first ``n`` draws with ``seed``)."""
    import random

    from .world import random_scene

    rng = random.Random(seed)
    return [random_scene(rng) for _ in range(n)]


@torch.no_grad()
def autoencoder_quality(ae, n: int = 200, seed: int = 10_000) -> dict[str, float]:
    """Encode -> decode ``n`` held-out scenes: mean PSNR (dB, images in [0, 1]) and the fraction whose
    reconstruction the evaluator reads with every attribute right (the autoencoder must not be the bottleneck)."""
    import random

    from .data import image_batch
    from .world import held_out_scene

    rng = random.Random(seed)
    scenes = [held_out_scene(rng) for _ in range(n)]
    x = image_batch(scenes)  # (n, 3, 64, 64) in [-1, 1]
    y = ae.decode(ae.encode(x.to(next(ae.parameters()).device), sample=False)).float().cpu().clamp(-1, 1)
    mse = ((y - x) / 2).pow(2).mean(dim=(1, 2, 3))  # (n,) on the [0, 1] scale
    psnr = float((10 * torch.log10(1 / mse.clamp_min(1e-10))).mean())
    acc = attribute_accuracy([tensor_to_pil(img) for img in y], scenes)["all"]
    return {"ae_psnr": round(psnr, 2), "ae_attribute_acc": acc}


def evaluate_model(pipe, *, n_t2i: int = 100, n_vqa: int = 200, n_edit: int = 100, seed: int = 10_000,
                   num_timesteps: int = 50, progress: bool = True, n_ae: int = 0) -> dict:
    """Held-out accuracy of a micro model: every scene is drawn from the held-out set (``world.is_held_out``,
    never used in training) with ``seed``; each seed gives a fresh set.

    t2i: the generated image shows the caption's colour / position / shape / size.
    vqa: the answer equals the true attribute (the four kinds of question asked equally often).
    edit: the edited image shows every attribute of the target (for "remove": an empty canvas); the five kinds
    of edit in turn. Official sampler defaults, ``num_timesteps`` grid points. ``n_ae`` > 0 adds the
    autoencoder's reconstruction quality (``autoencoder_quality``).
    """
    import random

    from tqdm.auto import tqdm

    from .world import EDIT_KINDS, QUESTIONS, caption, edit, held_out_scene, question_answer, render

    rng = random.Random(seed)
    scenes = [held_out_scene(rng) for _ in range(n_t2i)]
    images = [pipe.generate(caption(scene), seed=seed + i, num_timesteps=num_timesteps, progress=False).image
              for i, scene in enumerate(tqdm(scenes, desc="text-to-image", disable=not progress, leave=False))]
    t2i = attribute_accuracy(images, scenes) if scenes else {}
    by_kind = {}
    for i in tqdm(range(n_vqa), desc="questions", disable=not progress, leave=False):
        scene = held_out_scene(rng)
        kind, question, answer = question_answer(scene, rng, kind=list(QUESTIONS)[i % len(QUESTIONS)])
        got = pipe.answer(render(scene), question, max_tokens=8).strip()
        by_kind.setdefault(kind, []).append(got == answer)
    edit_by_kind = {}
    for i in tqdm(range(n_edit), desc="editing", disable=not progress, leave=False):
        kind, source, instruction, target = edit(held_out_scene(rng), rng, EDIT_KINDS[i % len(EDIT_KINDS)])
        out = pipe.edit(render(source), instruction, seed=seed + i, num_timesteps=num_timesteps, progress=False)
        edit_by_kind.setdefault(kind, []).append(all(matches(out.image, target).values()))
    metrics = {
        **{f"t2i_{a}_acc": t2i[a] for a in ("color", "position", "shape", "size") if t2i},
        "vqa_acc": sum(sum(v) for v in by_kind.values()) / max(n_vqa, 1),
        **{f"vqa_{k}_acc": sum(v) / len(v) for k, v in sorted(by_kind.items())},
        "edit_success": sum(sum(v) for v in edit_by_kind.values()) / max(n_edit, 1),
        **{f"edit_{k}_success": sum(v) / len(v) for k, v in sorted(edit_by_kind.items())},
    }
    if n_ae:
        metrics.update(autoencoder_quality(pipe.ae, n_ae, seed))
    return metrics


def metrics_table(metrics: dict) -> str:
    rows = [f"{'metric':<28}{'value':>8}", "-" * 36]
    rows += [f"{k:<28}{v:>8.3f}" if isinstance(v, float) else f"{k:<28}{v!s:>8}" for k, v in metrics.items()]
    return "\n".join(rows)


# --- words for a picture: what the evaluator reads, and why it counts as wrong ----------------------------

def image_verdict(image, scene, attributes=("shape", "color", "position", "size")) -> str:
    """Compare a drawn image with the micro-world scene it should show, as the evaluator reads it.

    'right' or 'wrong: colour reads blue (asked red), ...' — the evaluator (``micro.evaluate.detect``) is the
    same pixel reader that scores the model, so the words say *why* a picture counts as wrong.
    """
    from ..micro.evaluate import detect

    found = detect(image).scene
    if scene.empty:
        if found.empty:
            return "right (empty canvas)"
        return f"wrong: the evaluator still sees a {found.color} {found.shape}"
    if found.empty:
        return "wrong: the evaluator sees an empty canvas"
    wrong = [f"{a} reads {getattr(found, a)} (asked {getattr(scene, a)})" for a in attributes
             if getattr(scene, a) is not None and getattr(found, a) != getattr(scene, a)]  # None: not asked
    return "right" if not wrong else "wrong: " + ", ".join(wrong)


def judged_title(name: str, image, scene, width: int = 28) -> str:
    """'<name>: right' or '<name>: wrong: <why>' for a picture judged against ``scene``, plus the evaluator's
    shape match (IoU of the picture's core with the ideal template of the shape it read; 1 = a perfect shape)."""
    from ..micro.evaluate import detect

    found = detect(image)
    match = "" if found.scene.empty else f"\nshape match (IoU) {found.iou:.2f}"
    return verdict_title(f"{name}: {image_verdict(image, scene)}", width) + match

