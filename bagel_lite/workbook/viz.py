"""Small plotting helpers shared by the notebooks (matplotlib only).

``save_figure`` writes a figure into ``figures/`` when the environment variable ``BAGEL_LITE_FIGURES`` names
a folder (``make figures`` sets it and runs every notebook), so the README's pictures are always made by code.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

MODE_COLORS = {"causal": "#4c72b0", "full": "#55a868", "noise": "#c44e52"}


def _plt():
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, name: str) -> Path | None:
    """Save ``fig`` as ``<BAGEL_LITE_FIGURES>/<name>.png`` if that variable is set; return the path."""
    folder = os.environ.get("BAGEL_LITE_FIGURES")
    if not folder:
        return None
    path = Path(folder) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def to_image(x) -> Image.Image:
    """A PIL image, a (3, H, W) tensor in [-1, 1], or an (H, W, 3) uint8 array -> PIL image."""
    if isinstance(x, Image.Image):
        return x
    if isinstance(x, torch.Tensor):
        from ..loading.transforms import tensor_to_pil

        return tensor_to_pil(x)
    return Image.fromarray(np.asarray(x))


def frame(ax) -> None:
    """A thin grey frame around a picture, no ticks: a white canvas on a white page shows its edges."""
    ax.axis("on")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor("0.6")
        spine.set_linewidth(1.0)


def show_images(images, titles=None, ncols: int | None = None, size: float = 2.2, suptitle: str | None = None):
    """A row (or grid) of images with optional titles, each inside a thin grey frame (a white canvas on a white
    page would have no visible edge, and "on the left" could not be judged by eye). Returns the figure."""
    plt = _plt()
    images = [to_image(im) for im in images]
    ncols = ncols or len(images)
    nrows = (len(images) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for ax in axes.flat[len(images):]:
        ax.axis("off")
    for i, im in enumerate(images):
        ax = axes.flat[i]
        ax.imshow(im, interpolation="nearest")
        frame(ax)
        if titles:
            ax.set_title(titles[i], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def draw_patch_grid(ax, image, patch: int, ids=None, fontsize: float = 6):
    """Show ``image`` on ``ax`` with its patch grid, optionally writing each patch's position id."""
    im = to_image(image)
    ax.imshow(im, interpolation="nearest")
    w, h = im.size
    for x in range(0, w + 1, patch):
        ax.axvline(x - 0.5, color="white", lw=0.6)
    for y in range(0, h + 1, patch):
        ax.axhline(y - 0.5, color="white", lw=0.6)
    if ids is not None:
        cols = w // patch
        for k, pid in enumerate(ids.tolist()):
            r, c = divmod(k, cols)
            ax.text(c * patch + patch / 2, r * patch + patch / 2, str(pid), ha="center", va="center",
                    fontsize=fontsize, color="black", bbox=dict(boxstyle="round,pad=0.1", fc="white", alpha=0.7, lw=0))
    ax.set_xticks([])
    ax.set_yticks([])


def plot_mask(ax, allowed: torch.Tensor, split_lens=None, attn_modes=None, title: str | None = None):
    """Draw a boolean attention mask (rows = queries, columns = keys), with split boundaries and modes."""
    ax.imshow(allowed.float().numpy(), cmap="Greys", vmin=0, vmax=1.3, interpolation="nearest")
    if split_lens:
        edge = -0.5
        for n, mode in zip(split_lens, attn_modes):
            ax.add_patch(_plt().Rectangle((edge, -1.6), n, 1.0, color=MODE_COLORS[mode], clip_on=False))
            ax.text(edge + n / 2, -1.1, mode, ha="center", va="center", fontsize=7, color="white")
            edge += n
            ax.axvline(edge, color="#999", lw=0.5)
            ax.axhline(edge, color="#999", lw=0.5)
    ax.set_xlabel("key (is looked at)")
    ax.set_ylabel("query (looks)")
    if title:
        ax.set_title(title, pad=14)


def flow_chart(ax, stages, *, y: float = 0.0, color: str = "#4c72b0", label: str | None = None, width: float = 1.7,
               gap: float = 0.45):
    """Draw ``stages`` (strings) as boxes left to right at height ``y``, joined by arrows; ``label`` on the left."""
    plt = _plt()
    if label:
        ax.text(-0.2, y, label, ha="right", va="center", fontsize=10, fontweight="bold", color=color)
    for i, text in enumerate(stages):
        x = i * (width + gap)
        ax.add_patch(plt.Rectangle((x, y - 0.32), width, 0.64, fc=color, alpha=0.15, ec=color, lw=1.2))
        ax.text(x + width / 2, y, text, ha="center", va="center", fontsize=8)
        if i:
            ax.annotate("", xy=(x, y), xytext=(x - gap, y), arrowprops=dict(arrowstyle="->", color=color, lw=1.2))
    ax.set_xlim(-2.2, len(stages) * (width + gap))
    ax.axis("off")


# ----------------------------------------------------------------------------------------------------------
# Classroom kit and exercises

_PROJECTOR_RC = {"font.size": 15, "axes.titlesize": 16, "axes.labelsize": 15, "xtick.labelsize": 13,
                 "ytick.labelsize": 13, "legend.fontsize": 13, "figure.titlesize": 17, "figure.dpi": 130}
_PROJECTOR_CSS = """<style id="bagel-lite-projector">
:root { --jp-widgets-font-size: %dpx; --jp-widgets-inline-height: %dpx; --jp-widgets-inline-label-width: %dpx;
        --jp-content-font-size1: %dpx; --jp-code-font-size: %dpx; --jp-ui-font-size1: %dpx; }
.widget-label, .widget-readout, .widget-html-content, .jupyter-widgets { font-size: %dpx !important; }
</style>"""


def projector(on: bool = True, scale: float = 1.5) -> None:
    """Switch projector sizes on (or back off) for this notebook session: one call, top of the notebook.

    Sets matplotlib's rcParams (fonts and figure dpi: every later figure, hard-coded font sizes included,
    is drawn ``scale`` times larger) and shows a ``<style>`` that enlarges widget labels, readouts and the
    notebook's text. ``projector(False)`` sets those rcParams back to matplotlib's defaults and shows the default
    sizes again. No state is kept anywhere but in rcParams.
    Returns nothing, so ``projector()`` as a cell's last line prints nothing.
    """
    import matplotlib as mpl

    if on:  # sizes relative to matplotlib's defaults, so calling it twice does not compound
        mpl.rcParams.update({k: v for k, v in _PROJECTOR_RC.items() if k != "figure.dpi"})
        mpl.rcParams["figure.dpi"] = mpl.rcParamsDefault["figure.dpi"] * scale
        px = [round(13 * scale), round(28 * scale), round(80 * scale), round(14 * scale), round(13 * scale),
              round(13 * scale), round(13 * scale)]
    else:
        mpl.rcParams.update({k: mpl.rcParamsDefault[k] for k in _PROJECTOR_RC})
        px = [13, 28, 80, 14, 13, 13, 13]
    css = _PROJECTOR_CSS % tuple(px)
    try:
        from IPython import get_ipython
        from IPython.display import HTML, display
    except ImportError:
        return
    if get_ipython() is not None:
        display(HTML(css))


def check_prediction(prediction, expected, hint: str, tol: float = 1e-6) -> bool | None:
    """An exercise's check: says right / not yet (with ``hint``), never prints ``expected``.

    ``None`` as the prediction (the exercise not done yet) prints the hint and returns ``None``; numbers are
    compared within ``tol`` (relative for large values), strings case-insensitively, everything else with ``==``.
    """
    if prediction is None:
        print(f"Write your prediction into the variable first, then run the cell again. Hint: {hint}")
        return None
    right = _same(prediction, expected, tol)
    print("Right." if right else f"Not yet. Hint: {hint}")
    return bool(right)


def _same(prediction, expected, tol: float) -> bool:
    """Numbers within ``tol``, strings case-insensitively, lists and tuples alike element by element."""
    if isinstance(expected, int | float) and isinstance(prediction, int | float):
        return abs(float(prediction) - float(expected)) <= tol * max(1.0, abs(float(expected)))
    if isinstance(expected, str) and isinstance(prediction, str):
        return prediction.strip().lower() == expected.strip().lower()
    if isinstance(expected, torch.Tensor) or isinstance(prediction, torch.Tensor):
        try:
            p, e = torch.as_tensor(prediction, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64)
        except (TypeError, ValueError):
            return False
        return p.shape == e.shape and bool(torch.allclose(p, e, atol=tol))
    if isinstance(expected, list | tuple) and isinstance(prediction, list | tuple):
        return len(prediction) == len(expected) and all(_same(p, e, tol) for p, e in zip(prediction, expected))
    return bool(prediction == expected)


def verdict(found, truth, why: str = "") -> str:
    """'right' or 'wrong (truth: X; why)' for a showcase line that compares a model's answer with the truth."""
    if found == truth:
        return "right"
    return f"WRONG (truth: {truth}" + (f"; {why})" if why else ")")


def verdict_title(verdict: str, width: int = 28) -> str:
    """A short picture title from an ``image_verdict``: 'right', or 'wrong: position reads center' — the asked
    values left out (the caption says them) and the reasons wrapped to ``width`` characters."""
    import re
    import textwrap

    short = re.sub(r" \(asked [^)]*\)", "", verdict)
    return "\n".join(textwrap.wrap(short, width)) or short
