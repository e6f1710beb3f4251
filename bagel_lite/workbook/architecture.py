"""The map of BAGEL: every part of the data flow as a box naming its module and the notebook that teaches it.

    from bagel_lite.workbook.architecture import draw_map, you_are_here
    fig = draw_map()                  # the whole model, large (figures/architecture.png)
    you_are_here("mot")               # a small map with the part a notebook teaches highlighted

Three ways in (text ids; an image read by the ViT; an image latent from the VAE) are packed into one
sequence. Every decoder layer holds two experts (understanding, generation) whose queries, keys and values
meet in one attention. Two ways out: ``lm_head`` gives next-token logits, ``llm2vae`` a velocity that the
flow-matching sampler integrates, step by step, into a latent that the FLUX decoder turns into an image.

The picture is drawn from the table ``BOXES``; ``tests/test_architecture.py`` checks that every module it
names exists and that every part of ``PARTS`` lights at least one box.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# part -> (notebook, title) for the notebooks' headers; "tour" highlights nothing (the whole map).
PARTS = {
    "tour": ("00", "the tour"),
    "patchify": ("01", "patchification"),
    "positions": ("02", "positions"),
    "vae": ("03", "VAE latents"),
    "masks": ("04", "attention masks"),
    "mot": ("05", "MoT routing"),
    "training": ("05b", "training"),
    "sampler": ("06", "flow matching"),
    "understanding": ("07", "understanding"),
    "editing": ("08", "editing and think"),
    "playground": ("09", "playground"),
    "seedx": ("10", "SEED-X beside BAGEL"),
}

COLORS = {"und": "#4c72b0", "gen": "#c44e52", "shared": "#55a868", "io": "#6f6f6f", "out": "#8172b2",
          "other": "#937860"}
GREY = "#bdbdbd"
WIDTH, BOTTOM, TOP = 145.0, -15.0, 70.0  # map units: the canvas spans x in [0, WIDTH], y in [BOTTOM, TOP]


@dataclass(frozen=True)
class Box:
    key: str
    x: float  # lower-left corner and size, in map units
    y: float
    w: float
    h: float
    title: str  # bold; the whole label on the small map
    detail: str  # full map only
    module: str  # the bagel_lite module(s), as paths under bagel_lite/; full map only

    @property
    def files(self) -> str:
        """The module names as the map prints them: file names only (``model/siglip.py`` -> ``siglip.py``)."""
        return re.sub(r"\b[a-z_]+/(?=[a-z_0-9]+\.py)", "", self.module)
    notebooks: str  # the notebook(s) that teach it, e.g. "01, 07"
    kind: str  # a key of COLORS
    parts: tuple[str, ...]  # the parts of PARTS that light this box

    @property
    def center(self) -> tuple[float, float]:
        return self.x + self.w / 2, self.y + self.h / 2


# columns (x, width) and rows (centre y) of the grid
_A, _B, _C, _D, _PACK, _MOT, _HEAD, _RIGHT = (0, 13), (15, 17), (34, 17), (53, 17), (72, 12), (87, 21), (111, 15), \
    (129, 16)
_TEXT, _VIT, _VAE, _LOW = 50.0, 32.0, 14.0, -4.0


def _at(col, row, h=12.0):
    return col[0], row - h / 2, col[1], h


BOXES: tuple[Box, ...] = (
    Box("text", *_at(_A, _TEXT), "text", "prompt, question,\ninstruction", "loading/tokenizer.py", "07", "io",
        ("understanding", "editing", "playground")),
    Box("image_und", *_at(_A, _VIT), "image", "to read", "loading/transforms.py", "07", "io",
        ("understanding", "editing", "playground", "seedx")),
    Box("image_gen", *_at(_A, _VAE), "image", "to learn to draw,\nor edit's context", "loading/transforms.py", "03",
        "io",
        ("vae", "editing")),
    Box("embed", *_at(_B, _TEXT), "embed_tokens", "ids -> rows of width D", "model/qwen2_mot.py", "07", "und",
        ("understanding",)),
    Box("siglip", *_at(_B, _VIT), "SigLIP-NaViT", "14-px patches,\nany image size",
        "model/patchify.py, model/siglip.py", "01, 07",
        "und", ("patchify", "understanding", "editing", "seedx")),
    Box("connector", *_at(_C, _VIT), "connector", "+ vit_pos_embed\n(2D sin-cos)",
        "model/siglip.py, model/positions.py",
        "02, 07", "und", ("positions", "understanding")),
    Box("vae_enc", *_at(_B, _VAE), "FLUX encoder", "8x smaller,\n16 channels", "model/autoencoder.py", "03", "gen",
        ("vae", "editing")),
    Box("patch2", *_at(_C, _VAE), "2x2 patchify", "64 numbers\nper token", "model/patchify.py", "01", "gen",
        ("patchify", "vae")),
    Box("vae2llm", *_at(_D, _VAE), "vae2llm", "+ time_embedder(t)\n+ latent_pos_embed",
        "model/bagel.py, model/timestep.py",
        "02, 05b", "gen", ("positions", "training", "sampler")),
    Box("packed", _PACK[0], 2, _PACK[1], 60, "packed\nsequence", "text, ViT and\nlatent tokens\nin one row;\n\n"
        "causal / full /\nnoise splits;\n\n1D RoPE ids:\none per image", "model/masks.py\ntraining/packing.py",
        "02, 04",
        "shared", ("masks", "positions", "training")),
    Box("mot", _MOT[0], 2, _MOT[1], 60, "MoT layer  x N", "", "model/qwen2_mot.py", "05", "shared", ("mot",)),
    Box("und_expert", _MOT[0] + 2, 44, _MOT[1] - 4, 12, "understanding\nexpert", "text, markers, ViT", "", "05",
        "und", ("mot", "understanding")),
    Box("attention", _MOT[0] + 2, 26, _MOT[1] - 4, 12, "one shared\nattention", "QK-norm, RoPE,\nthe packed mask", "",
        "04, 05", "shared", ("mot", "masks", "training")),
    Box("gen_expert", _MOT[0] + 2, 8, _MOT[1] - 4, 12, "generation\nexpert", "latent tokens\n(*_moe_gen)", "", "05",
        "gen", ("mot",)),
    Box("lm_head", *_at(_HEAD, _TEXT), "lm_head", "next-token logits", "model/bagel.py", "07", "und",
        ("understanding", "training")),
    Box("llm2vae", *_at(_HEAD, _VAE), "llm2vae", "velocity v\nper latent token", "model/bagel.py", "05b, 06", "gen",
        ("sampler", "training")),
    Box("losses", *_at(_RIGHT, _VIT), "training losses", "CE on answers\n+ MSE(v, noise - x0)", "training/packing.py",
        "05b", "out", ("training",)),
    Box("sampler", *_at(_HEAD, _LOW), "flow-matching\nsampler", "t: 1 -> 0, CFG",
        "inference/flow.py, inference/denoising.py", "06, 08", "out", ("sampler", "editing")),
    Box("decoder", *_at(_RIGHT, _LOW), "FLUX decoder", "latent -> image", "model/autoencoder.py", "03", "gen",
        ("vae", "sampler", "editing")),
    Box("pipeline", 0, 64, WIDTH, 5.5, "Pipeline: generate / edit / answer / think / chat, over KV-cached "
        "contexts", "", "inference/pipeline.py, inference/conversation.py, inference/contexts.py, ui/",
        "00, 08, 09", "other",
        ("playground", "editing")),
    Box("seedx", 0, _LOW - 6, 51, 10, "SEED-X's road, beside BAGEL", "ViT embeddings pooled to N -> LLM regresses "
        "them -> de-tokenizer", "seedx/", "10", "other", ("seedx",)),
)

# (from, to, from side, to side, label): sides are "l", "r", "t", "b" (left, right, top, bottom)
ARROWS: tuple[tuple[str, str, str, str, str], ...] = (
    ("text", "embed", "r", "l", ""), ("embed", "packed", "r", "l", ""),
    ("image_und", "siglip", "r", "l", ""), ("siglip", "connector", "r", "l", ""), ("connector", "packed", "r", "l", ""),
    ("image_gen", "vae_enc", "r", "l", ""), ("vae_enc", "patch2", "r", "l", ""), ("patch2", "vae2llm", "r", "l", ""),
    ("vae2llm", "packed", "r", "l", ""),
    ("packed", "und_expert", "r", "l", ""), ("packed", "gen_expert", "r", "l", ""),
    ("und_expert", "attention", "b", "t", ""), ("gen_expert", "attention", "t", "b", ""),
    ("und_expert", "lm_head", "r", "l", ""), ("gen_expert", "llm2vae", "r", "l", ""),
    ("lm_head", "losses", "r", "t", ""), ("llm2vae", "losses", "r", "b", ""),
    ("llm2vae", "sampler", "b", "t", ""), ("sampler", "decoder", "r", "l", ""),
)


def _anchor(box: Box, side: str) -> tuple[float, float]:
    cx, cy = box.center
    return {"l": (box.x, cy), "r": (box.x + box.w, cy), "t": (cx, box.y + box.h), "b": (cx, box.y)}[side]


def lit_boxes(highlight: str | None) -> set[str]:
    """Keys of the boxes a part lights (all of them for None or "tour")."""
    if highlight is not None and highlight not in PARTS:
        raise ValueError(f"unknown part {highlight!r}; use one of {', '.join(PARTS)}")
    if highlight in (None, "tour"):
        return {b.key for b in BOXES}
    return {b.key for b in BOXES if highlight in b.parts}


def _draw_box(ax, box: Box, lit: bool, *, dim: bool, fontsize: float, compact: bool):
    """The box's fill and edge (the edge carries ``gid=box.key``), then its labels (each ``gid=box.key``)."""
    from matplotlib.patches import FancyBboxPatch

    color = COLORS[box.kind] if lit else GREY
    container = box.key == "mot" or (box.key == "packed" and not compact)
    alpha = 0.08 if container else (0.30 if lit and dim else 0.16)
    style = "round,pad=0,rounding_size=1.2"
    ax.add_patch(FancyBboxPatch((box.x, box.y), box.w, box.h, boxstyle=style, fc=color, alpha=alpha, ec="none",
                                zorder=1))
    ax.add_patch(FancyBboxPatch((box.x, box.y), box.w, box.h, boxstyle=style, fc="none", ec=color,
                                lw=3.5 if lit and dim else 1.6, zorder=2, gid=box.key))
    ink = "#222222" if lit else "#9a9a9a"

    def put(y, text, scale=1.0, **kw):
        kw = {"ha": "center", "color": ink, "linespacing": 1.08, **kw}
        ax.text(box.center[0], y, text, fontsize=fontsize * scale, gid=box.key, **kw)

    top = box.y + box.h
    if box.key == "mot":  # the container: title on top, module at the bottom, the experts inside
        put(top - 2.2, box.title, va="center", weight="bold")
        if not compact:
            put(box.y + 2.0, f"{box.files}  ·  nb {box.notebooks}", 0.75, va="center", family="monospace")
    elif compact:
        put(box.center[1], box.title, va="center", weight="bold")
    elif box.h < 8:  # a one-line banner
        put(box.center[1], f"{box.title}    [{box.files}  ·  nb {box.notebooks}]", 0.9, va="center",
            weight="bold")
    else:
        put(top - 0.9, box.title, va="top", weight="bold")
        if box.detail:
            put(top - 1.3 - 1.75 * (box.title.count("\n") + 1), box.detail, 0.8, va="top")
        module = f"{box.files}\nnb {box.notebooks}" if box.module else f"nb {box.notebooks}"
        put(box.y + 0.7, module, 0.7, va="bottom", family="monospace", color=COLORS[box.kind] if lit else ink)


def _draw_arrows(ax, boxes: dict[str, Box], lit: set[str], fontsize: float, compact: bool):
    for a, b, sa, sb, _ in ARROWS:
        on = a in lit and b in lit
        (x0, y0), (x1, y1) = _anchor(boxes[a], sa), _anchor(boxes[b], sb)
        if (sa, sb) == ("r", "l"):  # into or out of a tall box: stay horizontal, at the row of the other end
            y1 = y0 if boxes[b].h > 20 else y1
            y0 = y1 if boxes[a].h > 20 else y0
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0), zorder=3,
                    arrowprops=dict(arrowstyle="-|>", color="#333333" if on else GREY, lw=1.6, mutation_scale=16,
                                    shrinkA=0, shrinkB=0))
    # the sampler's loop: the Euler step's new x_t goes back in through vae2llm, at a smaller t
    on = "sampler" in lit and "vae2llm" in lit
    color = COLORS["out"] if on else GREY
    sx, sy = _anchor(boxes["sampler"], "l")
    vx, vy = _anchor(boxes["vae2llm"], "b")
    ax.plot([sx, vx], [sy, sy], color=color, lw=1.6, zorder=3)
    ax.annotate("", xy=(vx, vy), xytext=(vx, sy), zorder=3,
                arrowprops=dict(arrowstyle="-|>", color=color, lw=1.6, mutation_scale=16, shrinkA=0, shrinkB=0))
    if not compact:
        ax.text((sx + vx) / 2 + 4, sy + 0.8, "x_t at the next, smaller t (start: noise at t = 1)", ha="center",
                va="bottom", fontsize=fontsize * 0.75, color=color, style="italic")


def _legend(ax, fontsize: float):
    from matplotlib.patches import Rectangle

    items = [("understanding side", "und"), ("generation side", "gen"), ("shared by both", "shared"),
             ("outputs, losses, sampler", "out"), ("inputs", "io"), ("around the model", "other")]
    for i, (text, kind) in enumerate(items):
        x = i * WIDTH / len(items)
        ax.add_patch(Rectangle((x, BOTTOM + 0.3), 2.4, 2.4, fc=COLORS[kind], alpha=0.5, ec=COLORS[kind]))
        ax.text(x + 3.4, BOTTOM + 1.5, text, va="center", fontsize=fontsize * 0.8)


def draw_map(highlight: str | None = None, ax=None, fontsize: float = 15.0, compact: bool = False):
    """Draw BAGEL's data flow on ``ax`` (a new 22 x 13 inch figure when None); return the figure.

    ``highlight``: a key of ``PARTS`` to light its boxes and grey the rest (None or "tour": all in colour).
    ``compact``: titles only (the small "you are here" map). Assign the result (``fig = draw_map()``): a
    bare figure as the last line of a cell would be shown twice.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(13, 6.6) if compact else (22, 13))
        fig.subplots_adjust(left=0.005, right=0.995, bottom=0.005, top=0.94 if compact else 0.995)
    lit = lit_boxes(highlight)
    dim = highlight not in (None, "tour")
    boxes = {b.key: b for b in BOXES}
    for box in BOXES:
        _draw_box(ax, box, box.key in lit, dim=dim, fontsize=fontsize, compact=compact)
    _draw_arrows(ax, boxes, lit, fontsize, compact)
    if not compact:
        _legend(ax, fontsize)
    ax.set_xlim(-0.5, WIDTH + 0.5)
    ax.set_ylim(BOTTOM + (4.0 if compact else 0.0) - 0.5, TOP + 0.5)  # the compact map has no legend
    ax.set_aspect("auto")
    ax.axis("off")
    return ax.figure


def you_are_here(part: str, ax=None, fontsize: float = 10.5) -> None:
    """A small map of BAGEL with ``part`` (a key of ``PARTS``) lit, titled with its notebook.

    Returns nothing, so ``you_are_here("mot")`` as a cell's last line shows the figure once.
    """
    import matplotlib.pyplot as plt

    notebook, title = PARTS[part] if part in PARTS else (None, None)
    if ax is None:
        fig, ax = plt.subplots(figsize=(13, 6.6))
        fig.subplots_adjust(left=0.005, right=0.995, bottom=0.005, top=0.94)
    draw_map(None if part == "tour" else part, ax=ax, fontsize=fontsize, compact=True)
    heading = "BAGEL, the whole model" if part == "tour" else f"You are here: notebook {notebook}, {title}"
    if notebook is None:
        raise ValueError(f"unknown part {part!r}; use one of {', '.join(PARTS)}")
    ax.set_title(heading, fontsize=fontsize * 1.35, weight="bold", loc="left")


def main(argv=None) -> None:
    """``python -m bagel_lite.workbook.architecture [OUT.png]``: draw the map into a PNG file."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m bagel_lite.workbook.architecture",
                                 description="Draw the map of BAGEL (its data flow, each box naming its module "
                                             "and notebook) into a PNG file.")
    ap.add_argument("out", nargs="?", default="architecture.png", help="the PNG to write (default: %(default)s)")
    args = ap.parse_args(argv)
    if not args.out.lower().endswith(".png"):
        ap.error(f"{args.out!r} is not a .png file name: give the file to write, e.g. figures/architecture.png")
    draw_map().savefig(args.out, dpi=90, bbox_inches="tight")
    print(f"wrote {args.out}")


if __name__ == "__main__":  # python -m bagel_lite.workbook.architecture figures/architecture.png
    main()
