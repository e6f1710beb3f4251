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
