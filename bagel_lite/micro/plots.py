"""micro-BAGEL's training log drawn: per-step losses with the recipe's stages shaded, and the evaluations made
during training. (General training-log plots are ``workbook.curves``; this one knows micro-BAGEL's recipe.)"""

from __future__ import annotations

import math

from ..workbook.curves import is_number, log_label, mantissa, positive_or_gap, smooth


def is_micro_log(log) -> bool:
    """Whether ``log`` is micro-BAGEL's own format: ``"loss": {"ce": [per step], "mse": [per step]}``."""
    loss = log.get("loss") if isinstance(log, dict) else None
    return isinstance(loss, dict) and isinstance(loss.get("ce"), list) and isinstance(loss.get("mse"), list)


EVAL_LABELS = {"t2i_color_acc": "drawn colour right", "t2i_position_acc": "drawn position right",
               "t2i_shape_acc": "drawn shape right", "t2i_size_acc": "drawn size right",
               "vqa_acc": "questions answered right", "vqa_position_acc": "'where?' answered right",
               "edit_success": "edits fully right"}


def _draw_micro_evals(b, names: list[str], evals: list[dict], steps: list[int], fontsize: float) -> None:
    for name in names:
        pts = [(r["step"], r[name]) for r in evals if is_number(r.get(name))]
        b.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=4, lw=1.6, label=EVAL_LABELS.get(name, name))
    b.set_ylim(-0.03, 1.03)
    b.set_xlim(0, max(steps[-1] if steps else 1, max((r["step"] for r in evals), default=1)))
    b.set(xlabel="step", ylabel="share right (held-out scenes)")
    b.set_title("evaluations of the EMA weights during training" if names else "no evaluations in this log",
                fontsize=fontsize)
    if names:
        b.legend(fontsize=fontsize * 0.7, ncol=1 + len(names) // 5, loc="best")
    b.grid(alpha=0.3)


def _shade_stages(axes, align: int, final, last: int, shift=None) -> None:
    """Shade the alignment phase (grey) and the final stage (green) on every axis; legend entries on the first.
    ``shift``: how far stage 3 moved question pictures (pixels), as the log's settings say."""
    spans = [(0, align, "#999", f"alignment: questions only (steps 1–{align})")] if align else []
    if is_number(final):
        moved = f"pictures moved ≤ {shift} px, " if is_number(shift) and shift else ""
        spans.append((final, last, "#55a868", f"stage 3: {moved}from step {final + 1}"))
    for start, end, color, label in spans:
        for ax in axes:
            ax.axvspan(start, end, color=color, alpha=0.13, lw=0)
            ax.axvline(end if start == 0 else start, color=color, ls=":", lw=1.2)
        axes[0].plot([], [], color=color, alpha=0.35, lw=8, label=label)


def plot_micro_log(log: dict, fontsize: float = 12, title: str | None = None, window: int | None = None):
    """micro-BAGEL's training log (``python -m bagel_lite.micro train`` writes it) in two panels.

    Left: cross-entropy and velocity MSE per step (faint) and their moving average (bold), on a log scale; the
    alignment phase (the first ``align_steps`` steps: questions only, so no MSE) is shaded grey, a final stage
    (from step ``final_start``, ``micro.train.FinalStage``) green. Right: the periodic
    evaluations of the EMA weights (``"evals"``: records with a ``"step"``). The title adds the autoencoder's
    quality and the training time when the log has them.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    ce, mse = positive_or_gap(log["loss"]["ce"]), positive_or_gap(log["loss"]["mse"])
    steps = list(range(1, max(len(ce), len(mse)) + 1))
    window = window or max(1, len(steps) // 50)
    align = log.get("align_steps") or log.get("settings", {}).get("align_steps") or 0
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.6))
    for name, values, color in (("cross-entropy (answers)", ce, "#4c72b0"), ("MSE (velocity)", mse, "#c44e52")):
        if not any(not math.isnan(v) for v in values):
            continue
        a.plot(steps[:len(values)], values, lw=0.6, alpha=0.25, color=color)
        a.plot(steps[:len(values)], smooth(values, window), lw=2.2, color=color,
               label=f"{name}, mean of {window}" if window > 1 else name)
    final = (log.get("settings") or {}).get("final")  # stage 3's settings (a dict), if the log has them
    _shade_stages((a, b), align, log.get("final_start"), steps[-1] if steps else 1,
                  final.get("question_shift") if isinstance(final, dict) else None)
    a.set_yscale("log")
    a.yaxis.set_major_formatter(FuncFormatter(log_label))
    shown = [v for v in ce + mse if not math.isnan(v)]  # positive, or NaN (_positive)
    roomy = not shown or max(shown) / min(shown) <= 1e3  # 2 and 5 between powers of ten fit on up to 3 decades
    a.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: log_label(v) if roomy and mantissa(v) in (2, 5) else ""))
    a.set(xlabel="step", ylabel="loss (log scale)")
    a.set_title("losses per step", fontsize=fontsize)
    a.legend(fontsize=fontsize * 0.8)
    a.grid(alpha=0.3, which="both")
    evals = [r for r in log.get("evals") or [] if isinstance(r, dict) and is_number(r.get("step"))]
    names = [k for k in dict.fromkeys(k for r in evals for k in r) if k != "step"
             and any(is_number(r.get(k)) for r in evals)]
    _draw_micro_evals(b, names, evals, steps, fontsize)
    for ax in (a, b):
        ax.xaxis.label.set_size(fontsize)
        ax.yaxis.label.set_size(fontsize)
        ax.tick_params(which="both", labelsize=fontsize * 0.85)
    facts = []
    if is_number(log.get("ae_psnr")):
        facts.append(f"autoencoder PSNR {log['ae_psnr']:.1f} dB")
    if is_number(log.get("ae_attribute_acc")):
        facts.append(f"its reconstructions read back right {log['ae_attribute_acc']:.0%}")
    if is_number(log.get("train_seconds")):
        facts.append(f"trained in {log['train_seconds'] / 60:.0f} min")
    heading = "\n".join(x for x in (title, "; ".join(facts)) if x)
    if heading:
        fig.suptitle(heading, fontsize=fontsize * 1.1)
    fig.tight_layout()
    return fig
