"""Your own training data, as JSONL a person can write by hand, mixed by weights and packed to a token budget.

One line per example; image paths are relative to the JSONL file (or absolute)::

    {"task": "t2i",  "image": "cat.png", "prompt": "a cat on a red sofa"}
    {"task": "edit", "source": "cat.png", "target": "cat_blue.png", "instruction": "make the sofa blue"}
    {"task": "vqa",  "image": "cat.png", "question": "What colour is the sofa?", "answer": "Red."}

Each line becomes the items of one packed sample (``packing.Text`` / ``VitImage`` / ``VaeImage``), as BAGEL
trains them: a prompt then the noisy image to draw (text-to-image); the picture for the ViT, the question, then
the answer with the cross-entropy loss (understanding); the source as clean VAE latents *and* as ViT tokens,
the instruction, then the noisy target (editing). Condition dropout, BAGEL's defaults: a prompt or instruction
vanishes with probability 0.1, the edit's clean VAE image and its ViT image each with 0.3 (so the model also
learns the unconditional velocities that classifier-free guidance needs).

Several files mix by weights (``--data a.jsonl:2 b.jsonl:1`` draws from ``a`` twice as often), as the official
trainer mixes its data groups. A micro-batch takes examples until it holds ``expected_tokens`` tokens, never more
than ``max_tokens`` (the official fine-tuning budgets are 10,240 expected / 11,520 at most).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image

from ..loading.transforms import ImageTransform
from ..model.autoencoder import AutoEncoder
from ..model.config import BagelConfig
from .packing import PackedSequence, Text, VaeImage, VitImage

FIELDS = {"t2i": ("image", "prompt"), "edit": ("source", "target", "instruction"),
          "vqa": ("image", "question", "answer")}
IMAGE_FIELDS = ("image", "source", "target")


@dataclass(frozen=True)
class Dropout:
    """Condition dropout probabilities (BAGEL's defaults)."""

    text: float = 0.1
    vit: float = 0.3
    vae: float = 0.3


class DataError(ValueError):
    """A data file or line that cannot be used; the message names the file, the line and the fix."""


@dataclass
class Source:
    path: Path
    weight: float
    examples: list[dict]


def parse_data_arg(arg: str) -> tuple[Path, float]:
    """``file.jsonl`` or ``file.jsonl:WEIGHT`` -> (path, weight)."""
    path, _, weight = arg.rpartition(":")
    try:
        weight = float(weight)
    except ValueError:  # no ":WEIGHT" at the end: the whole argument is the file
        path, weight = arg, 1.0
    if weight <= 0:
        raise DataError(f"{arg}: a data weight must be positive (file.jsonl:2 draws it twice as often as :1)")
    return Path(path), weight


def read_jsonl(path: Path, weight: float = 1.0) -> Source:
    """Read and check every line now, so that a bad line stops the run before any training, naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no data file {path}: give a JSONL file (one example per line; see "
                        "bagel_lite/training/data.py for the three kinds of line)")
    examples = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            ex = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not JSON ({e.msg}); each line is one object such as "
                            '{"task": "t2i", "image": "cat.png", "prompt": "a cat"}') from None
        task = ex.get("task") if isinstance(ex, dict) else None
        if task not in FIELDS:
            raise DataError(f"{where}: \"task\" must be one of {sorted(FIELDS)}, got {task!r}")
        missing = [f for f in FIELDS[task] if not isinstance(ex.get(f), str) or not ex[f]]
        if missing:
            raise DataError(f"{where}: a {task} line needs the text fields {list(FIELDS[task])}; missing or empty: "
                            f"{missing}")
        for f in IMAGE_FIELDS:
            if f in ex:
                image = (path.parent / ex[f]).resolve()
                if not image.is_file():
                    raise DataError(f"{where}: image {ex[f]!r} not found (looked for {image}); paths are relative "
                                    "to the JSONL file")
                ex = {**ex, f: image}
        examples.append({**ex, "line": number})
    if not examples:
        raise DataError(f"{path} holds no examples")
    return Source(path, weight, examples)


class ExampleReader:
    """Turns a JSONL example into packed-sample items: images through the model's transforms, the VAE image
    through the frozen autoencoder (a sampled posterior, as BAGEL encodes)."""

    def __init__(self, tokenizer, ae: AutoEncoder, vae_transform: ImageTransform, vit_transform: ImageTransform,
                 dropout: Dropout = Dropout()):
        self.tokenizer, self.ae, self.dropout = tokenizer, ae, dropout
        self.vae_transform, self.vit_transform = vae_transform, vit_transform

    def ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def _image(self, path: Path) -> Image.Image:
        return Image.open(path).convert("RGB")

    @torch.no_grad()
    def latent(self, path: Path, generator: torch.Generator) -> torch.Tensor:
        x = self.vae_transform(self._image(path))  # (3, H, W) in [-1, 1], sides multiples of the stride
        return self.ae.encode(x[None].to(next(self.ae.parameters()).dtype), generator=generator)[0].float()

    def pixels(self, path: Path) -> torch.Tensor:
        return self.vit_transform(self._image(path))  # (3, H, W)

    def items(self, ex: dict, generator: torch.Generator) -> list:
        d = self.dropout
        if ex["task"] == "t2i":
            return [Text(self.ids(ex["prompt"]), drop_prob=d.text), VaeImage(self.latent(ex["image"], generator),
                                                                             noisy=True)]
        if ex["task"] == "vqa":
            return [VitImage(self.pixels(ex["image"])), Text(self.ids(ex["question"])),
                    Text(self.ids(ex["answer"]), loss=True)]
        return [VaeImage(self.latent(ex["source"], generator), drop_prob=d.vae),
                VitImage(self.pixels(ex["source"]), drop_prob=d.vit),
                Text(self.ids(ex["instruction"]), drop_prob=d.text),
                VaeImage(self.latent(ex["target"], generator), noisy=True)]


def sample_length(items: list, cfg: BagelConfig, special) -> int:
    """Tokens the sample takes when nothing is dropped (dropout only shortens it)."""
    seq = PackedSequence(special)
    seq.add_sample([replace(item, drop_prob=0.0) for item in items], cfg, random.Random(0))
    return seq.length


def micro_batch(sources: list[Source], reader: ExampleReader, cfg: BagelConfig, special, *, seed: int, step: int,
                index: int, expected_tokens: int, max_tokens: int) -> tuple[PackedSequence, torch.Generator]:
    """Micro-batch ``index`` of optimiser step ``step``: examples drawn by the sources' weights until the packed
    sequence holds ``expected_tokens``, never over ``max_tokens``. It depends only on (seed, step, index), so
    each process builds only its own micro-batches and a resumed run builds the same ones again. Returns the
    sequence and the generator of its flow times and noise (``seq.batch(shift, generator)``)."""
    rng = random.Random(f"{seed}-{step}-{index}")
    gen = torch.Generator().manual_seed(rng.randrange(2**62))  # the VAE's posterior samples
    noise = torch.Generator().manual_seed(rng.randrange(2**62))  # the flow's times and noise (PackedSequence.batch)
    seq = PackedSequence(special)
    for _ in range(10_000):
        source = rng.choices(sources, weights=[s.weight for s in sources])[0]
        example = rng.choice(source.examples)
        items = reader.items(example, gen)
        n = sample_length(items, cfg, special)
        if n > max_tokens:
            raise DataError(f"{source.path}, line {example['line']}: this example takes {n} tokens, more than "
                            f"--max-tokens {max_tokens}: raise the budget, or resize the images (--image-size)")
        if seq.length + n > max_tokens:
            break
        seq.add_sample(items, cfg, rng)
        if seq.length >= expected_tokens:
            break
    return seq, noise


def write_demo_data(folder: str | Path, lines: int = 20) -> Path:
    """A small JSONL to try the fine-tuning command on: ``lines`` examples of the three kinds (text-to-image,
    question, edit) about one coloured circle on a 32x32 white picture. Returns the JSONL's path."""
    from PIL import ImageDraw

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    colors = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 160, 60)}
    rng, rows = random.Random(0), []

    def draw(color: str, x: int, name: str) -> str:
        image = Image.new("RGB", (32, 32), "white")
        ImageDraw.Draw(image).ellipse([x, 10, x + 12, 22], fill=colors[color])
        image.save(folder / name)
        return name

    for i in range(lines):
        c, c2, x = rng.choice(list(colors)), rng.choice(list(colors)), rng.choice([2, 18])
        side = "left" if x < 16 else "right"
        source = draw(c, x, f"{i}.png")
        rows.append([{"task": "t2i", "image": source, "prompt": f"a {c} circle on the {side}"},
                     {"task": "vqa", "image": source, "question": "What colour is the circle?", "answer": c},
                     {"task": "edit", "source": source, "target": draw(c2, x, f"{i}_edit.png"),
                      "instruction": f"make the circle {c2}"}][i % 3])
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


if __name__ == "__main__":  # python -m bagel_lite.training.data DIR: write the demo data set into DIR
    import sys

    print(write_demo_data(sys.argv[1] if len(sys.argv) > 1 else "finetune-demo"))
