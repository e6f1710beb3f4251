"""What the training notebook relies on: log reading and plotting, EMA, timestep density, token/loss views."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bagel_lite import micro  # noqa: E402
from bagel_lite.inference.flow import logit_normal_timesteps  # noqa: E402
from bagel_lite.loading.tokenizer import SpecialTokens  # noqa: E402
from bagel_lite.micro.data import micro_config  # noqa: E402
from bagel_lite.micro.plots import is_micro_log, plot_micro_log  # noqa: E402
from bagel_lite.training.ema import ema_copy, ema_decay, ema_update, ema_variance_ratio  # noqa: E402
from bagel_lite.training.packing import PackedSequence, Text, VaeImage, VitImage  # noqa: E402
from bagel_lite.workbook.curves import (  # noqa: E402
    LiveCurves,
    plot_training_log,
    read_log,
    smooth,
    split_columns,
    tables,
)
from bagel_lite.workbook.training_views import (  # noqa: E402
    draw_packed_batch,
    fraction_above_half,
    logit_normal_density,
    token_kinds,
    token_losses,
)

RECORDS = {"seed": 0, "train_seconds": 12.0,
           "history": [{"step": s, "ce": 6.0 / (1 + s), "mse": 2.0 - s / 100, "lr": 1e-3} for s in range(50)],
           "evals": [{"step": s, "metrics": {"vqa_acc": s / 100, "t2i_color_acc": 0.5}} for s in (10, 20, 40)]}
COLUMNS = {"log": {"steps": list(range(30)), "loss_ce": [1.0] * 30, "loss_mse": [0.5] * 29 + [None],
                   "seconds": list(range(30))}}


def test_tables_find_records_and_columns_anywhere():
    found = {t.where: t for t in tables(RECORDS)}
    assert set(found) == {"history", "evals"}
    assert found["history"].step[:3] == [0.0, 1.0, 2.0] and found["history"].columns["ce"][1] == 3.0
    assert found["evals"].columns["vqa_acc"] == [0.1, 0.2, 0.4]  # nested metrics flattened one level
    (table,) = tables(COLUMNS)
    assert table.where == "log" and math.isnan(table.columns["loss_mse"][-1])
    assert tables({"seed": 0, "settings": {"lr": 1.0}}) == []


def test_split_columns_skips_rates_and_timings():
    losses, evals = split_columns(tables(RECORDS))
    assert sorted(n for n, _ in losses) == ["ce", "mse"]
    assert sorted(n for n, _ in evals) == ["t2i_color_acc", "vqa_acc"]
    losses, evals = split_columns(tables(COLUMNS))
    assert sorted(n for n, _ in losses) == ["loss_ce", "loss_mse"] and evals == []


def test_plot_training_log_draws_what_the_log_holds():
    fig = plot_training_log(RECORDS)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 3 and "evaluation during training" in titles
    assert fig.axes[0].get_yscale() == "log"
    plt.close(fig)
    fig = plot_training_log({"seed": 0, "train_seconds": 799.9})
    assert len(fig.axes) == 1 and "no per-step losses" in fig.axes[0].texts[0].get_text()
    plt.close(fig)
    plt.close(plot_training_log(read_log(micro.CHECKPOINT / "train_log.json")))  # the shipped log, whatever its layout


def micro_log(align=40, steps=200):
    """A synthetic log in the exact shape ``python -m bagel_lite.micro train`` writes."""
    g = random.Random(0)
    ce = [round(6.0 / (1 + s / 20) + 0.1 * g.random(), 4) for s in range(steps)]
    mse = [0.0 if s < align else round(1.9 - 0.4 * (s - align) / steps + 0.05 * g.random(), 4) for s in range(steps)]
    evals = [{"step": s, "t2i_color_acc": s / steps, "t2i_position_acc": 0.5, "vqa_acc": 0.3 + s / (2 * steps),
              "vqa_position_acc": 0.25, "edit_success": 0.1} for s in range(50, steps + 1, 50)]
    return {"seed": 0, "train_seconds": 900.0, "ae_reconstruction_error": 4.0, "ae_rec_loss": 0.07,
            "settings": {"seed": 0, "align_steps": align, "steps": steps - align},
            "ae_curve": [[s, 0.5 / (1 + s)] for s in range(0, 400, 50)], "ae_psnr": 27.5, "ae_attribute_acc": 0.98,
            "loss": {"ce": ce, "mse": mse}, "align_steps": align, "evals": evals}


def test_plot_micro_log_draws_the_trainers_format():
    log = micro_log()
    assert is_micro_log(log) and not is_micro_log(RECORDS)
    fig = plot_micro_log(log, title="synthetic")
    losses, evals = fig.axes
    assert losses.get_yscale() == "log" and evals.get_ylim() == (-0.03, 1.03)
    labels = [line.get_label() for line in losses.lines]
    assert any(lab.startswith("cross-entropy") for lab in labels) and any(lab.startswith("MSE") for lab in labels)
    assert any("alignment" in lab for lab in labels)  # the alignment phase is marked (and shaded)
    assert len(losses.patches) == 1 and losses.patches[0].get_x() == 0  # the shaded span starts at step 0
    assert len([line for line in evals.lines if line.get_marker() == "o"]) == 5  # five evaluation series
    assert "PSNR 27.5 dB" in fig._suptitle.get_text()
    # the MSE of the alignment phase (zero: no image was drawn) is a gap on the log scale, not a crash
    mse_line = next(line for line in losses.lines if line.get_label().startswith("MSE"))
    assert math.isnan(mse_line.get_ydata()[0]) and mse_line.get_ydata()[-1] > 0
    plt.close(fig)
    no_evals = dict(log, evals=[], align_steps=0)
    fig = plot_micro_log(no_evals)
    assert fig.axes[1].get_title() == "no evaluations in this log"
    plt.close(fig)


def test_plot_micro_log_says_how_far_its_stage_3_moved_pictures():
    """The stage-3 legend reads the shift from the log's own settings (it said "1 px" whatever the log held)."""
    log = micro_log()
    stage3 = len(log["loss"]["ce"]) - 100
    for shift, words in ((2, "pictures moved ≤ 2 px, from step"), (1, "pictures moved ≤ 1 px, from step"),
                         (None, "stage 3: from step")):
        settings = {"final": {"question_shift": shift}} if shift else {}
        fig = plot_micro_log(dict(log, final_start=stage3, settings=settings))
        labels = [line.get_label() for line in fig.axes[0].lines]
        assert any(lab.startswith("stage 3") and words in lab and f"{stage3 + 1}" in lab for lab in labels), labels
        plt.close(fig)


def test_smooth_and_live_curves_outside_a_notebook():
    assert smooth([1.0, 3.0, math.nan, 5.0], 2) == [1.0, 2.0, 3.0, 5.0]
    live = LiveCurves(("ce", "mse"), guides={"ce": [(2.0, "guess")]})
    for step in range(5):
        live.add(step, ce=5.0 - step, mse=2.0)
    live.show()  # no IPython here: draws, displays nothing
    fig = live.draw()
    assert len(fig.axes) == 2 and any(line.get_label() == "guess" for line in fig.axes[0].lines)
    live.close()


def test_ema_update_and_its_variance():
    model = torch.nn.Linear(3, 2)
    ema = ema_copy(model)
    assert all(not p.requires_grad for p in ema.parameters())
    before = ema.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema_update(ema, model, 0.9)
    assert torch.allclose(ema.weight, 0.9 * before + 0.1 * model.weight)
    assert ema_decay(0, 0.995) == pytest.approx(0.1) and ema_decay(10_000, 0.995) == 0.995
    g, w, avg, values = torch.Generator().manual_seed(0), torch.nn.Linear(1, 1, bias=False), None, []
    avg = ema_copy(w)
    with torch.no_grad():
        avg.weight.fill_(0.0)
    for _ in range(6000):
        with torch.no_grad():
            w.weight.fill_(float(torch.randn(1, generator=g)))
        ema_update(avg, w, 0.9)
        values.append(avg.weight.item())
    assert torch.tensor(values[100:]).var().item() == pytest.approx(ema_variance_ratio(0.9), rel=0.1)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_logit_normal_density_matches_the_sampler(shift):
    t = torch.linspace(1e-4, 1 - 1e-4, 20001)
    assert torch.trapezoid(logit_normal_density(t, shift), t).item() == pytest.approx(1.0, abs=2e-3)
    draws = logit_normal_timesteps(200_000, shift, torch.Generator().manual_seed(0))
    assert (draws > 0.5).float().mean().item() == pytest.approx(fraction_above_half(shift), abs=4e-3)
    inside = ((draws > 0.2) & (draws < 0.4)).float().mean().item()
    grid = torch.linspace(0.2, 0.4, 2001)
    assert inside == pytest.approx(torch.trapezoid(logit_normal_density(grid, shift), grid).item(), abs=4e-3)


def test_token_kinds_and_losses_of_a_packed_sample():
    special = SpecialTokens(bos=1, eos=2, start_of_image=3, end_of_image=4)
    model = SimpleNamespace(config=micro_config(vocab_size=64))
    seq = PackedSequence(special)
    seq.add_sample([VaeImage(torch.zeros(16, 8, 8)), VitImage(torch.zeros(3, 64, 64)), Text([5, 6]),
                    VaeImage(torch.zeros(16, 8, 8), noisy=True)], model.config, random.Random(0))
    seq.add_sample([VitImage(torch.zeros(3, 64, 64)), Text([7]), Text([8, 9, 10], loss=True)], model.config,
                   random.Random(0))
    kinds, losses = token_kinds(seq, special), token_losses(seq, special)
    assert kinds[:2] == ["marker", "clean latent"] and kinds.count("noisy latent") == 16
    assert kinds.count("vit") == 32 and kinds.count("marker") == 8 and "" not in kinds
    assert losses.count("CE target") == 4  # 3 answer tokens + <|im_end|>
    assert all(loss == "MSE target" for k, loss in zip(kinds, losses) if k == "noisy latent")
    assert all(loss == "no loss" for k, loss in zip(kinds, losses) if k in ("clean latent", "vit", "marker"))
    fig = draw_packed_batch(seq, special, ["edit", "question"])
    assert len(fig.axes) >= 3
    plt.close(fig)
