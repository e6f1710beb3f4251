"""The sampler explorer of notebook 06, driven through its handler (the button calls the same method)."""

from __future__ import annotations

import torch

from bagel_lite import micro
from bagel_lite.ui import SamplerExplorer


def test_explorer_runs_and_reacts_to_its_knobs():
    explorer = SamplerExplorer(micro.load(), "a large red circle on the left")
    explorer.steps.value = 6
    first = explorer.run()
    assert first.image.size == (64, 64) and len(explorer.trajectory.ts) == 5
    explorer.cfg_text.value = 1.0  # no guidance: another velocity, another picture
    second = explorer.run()
    assert not torch.equal(first.latents, second.latents)
    assert "cfg_text_scale=1.0" in second.call
    fig = explorer.figure()
    assert len(fig.axes) >= explorer.frames


def test_explorer_button_shows_errors_in_the_widget():
    explorer = SamplerExplorer(micro.load(), "   ")
    explorer._on_click()
    assert "prompt is empty" in explorer.status.value and not explorer.button.disabled


def test_the_explorers_take_an_official_layout_pipeline():
    """The full model loads as an official-layout folder; the tiny golden checkpoint has that layout and every
    structural feature of BAGEL-7B-MoT, so the explorers built on it are the ones a GPU user gets."""
    from pathlib import Path

    import bagel_lite
    from bagel_lite.ui import Playground

    pipe = bagel_lite.load(Path(__file__).parent / "golden" / "tiny_ckpt")
    assert SamplerExplorer(pipe).image_shape == (1024, 1024)  # the official default size, as on a GPU
    explorer = SamplerExplorer(pipe, "a red circle", image_shape=(64, 96))  # smaller, for a CPU
    explorer.steps.value = 3
    result = explorer.run()
    assert result.image.size == (96, 64) and len(explorer.trajectory.ts) == 2
    assert len(explorer.figure().axes) >= 2
    assert Playground(pipe) is not None
