"""What the training notebook draws and derives: a packed batch token by token (what it is, which loss it
carries, its RoPE position) and the density of the shifted logit-normal timesteps.

Timesteps: ``u = sigmoid(z)``, ``z ~ N(0, 1)``, then the shift ``t = s u / (1 + (s - 1) u)``. The density of u is
``phi(logit u) / (u (1 - u))``; inverting the shift, ``u = t / (s - (s - 1) t)`` and ``du/dt = s / (s - (s - 1) t)^2``,
so ``p(t) = p_u(u(t)) du/dt``. ``P(t > 1/2) = Phi(ln s)``: shift 3 puts 86 % of the training images above half
noise.
"""

from __future__ import annotations

import math

import torch

from ..training.packing import PackedSequence

KIND_COLORS = {"text": "#4c72b0", "marker": "#b0b0b0", "vit": "#64b5cd", "clean latent": "#dd8452",
               "noisy latent": "#c44e52"}
LOSS_COLORS = {"CE target": "#4c72b0", "MSE target": "#c44e52", "no loss": "#f2f2f2"}


def logit_normal_density(t: torch.Tensor, shift: float = 1.0) -> torch.Tensor:
    """Density of ``flow.logit_normal_timesteps(n, shift)`` at t in (0, 1)."""
    u = t / (shift - (shift - 1) * t)
    du_dt = shift / (shift - (shift - 1) * t) ** 2
    z = torch.log(u / (1 - u))
    p_u = torch.exp(-z**2 / 2) / math.sqrt(2 * math.pi) / (u * (1 - u))
    return p_u * du_dt


def fraction_above_half(shift: float) -> float:
    """P(t > 1/2) for shifted logit-normal times: t > 1/2 <=> u > 1/(1+s) <=> z > -ln s, so Phi(ln s)."""
    return 0.5 * (1 + math.erf(math.log(shift) / math.sqrt(2)))


def token_kinds(seq: PackedSequence, special) -> list[str]:
    """The kind of every token of a packed sequence: text, marker, vit, clean latent, noisy latent."""
    kinds = [""] * seq.length
    markers = {special.start_of_image, special.end_of_image}
    for i, tid in zip(seq.text_index, seq.text_ids):
        kinds[i] = "marker" if tid in markers else "text"
    for i in seq.vit_index:
        kinds[i] = "vit"
    rows = iter(seq.latent_index)
    for tokens, noisy in zip(seq.latents, seq.latent_noisy):
        for _ in range(len(tokens)):
            kinds[next(rows)] = "noisy latent" if noisy else "clean latent"
    return kinds


def token_losses(seq: PackedSequence, special) -> list[str]:
    """Which loss each token's output carries: CE target (predicts the next text token), MSE target, no loss."""
    losses = ["no loss"] * seq.length
    for i in seq.ce_index:
        losses[i] = "CE target"
    for i, kind in enumerate(token_kinds(seq, special)):
        if kind == "noisy latent":
            losses[i] = "MSE target"
    return losses


def draw_packed_batch(seq: PackedSequence, special, names: list[str] | None = None, fontsize: float = 12):
    """Three aligned strips for a packed sequence: token kind, loss carried, RoPE position id. Returns the figure."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(3, 1, figsize=(16, 5.8), sharex=True, gridspec_kw={"height_ratios": [1, 1, 2]})
    for ax, labels, colors, title in ((axes[0], token_kinds(seq, special), KIND_COLORS, "token"),
                                      (axes[1], token_losses(seq, special), LOSS_COLORS, "loss on\nits output")):
        keys = list(colors)
        ax.imshow([[keys.index(k) for k in labels]], aspect="auto", interpolation="nearest",
                  cmap=ListedColormap(list(colors.values())), vmin=-0.5, vmax=len(keys) - 0.5)
        ax.set_yticks([])
        ax.set_ylabel(title, fontsize=fontsize * 0.85, rotation=0, ha="right", va="center")
        ax.legend(handles=[Patch(color=c, label=k) for k, c in colors.items()], fontsize=fontsize * 0.8,
                  loc="center left", bbox_to_anchor=(1.005, 0.5), frameon=False)
    axes[2].step(range(seq.length), seq.position_ids, where="mid", color="k", lw=1.5)
    axes[2].set_ylabel("RoPE position", fontsize=fontsize)
    axes[2].set_xlabel("index in the packed sequence", fontsize=fontsize)
    edges = [sum(seq.sample_lens[:k]) for k in range(len(seq.sample_lens) + 1)]
    for edge in edges:
        for ax in axes:
            ax.axvline(edge - 0.5, color="k", lw=2)
    if names:  # the samples' names along the top
        top = axes[0].secondary_xaxis("top")
        top.set_xticks([(a + b) / 2 - 0.5 for a, b in zip(edges, edges[1:])], names, fontsize=fontsize,
                       weight="bold")
        top.tick_params(length=0)
    axes[2].tick_params(labelsize=fontsize * 0.85)
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    return fig
