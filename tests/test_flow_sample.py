"""The one sampling loop (``flow.sample``) and the rules of guidance, written once in ``flow.py``."""

from __future__ import annotations

import pytest
import torch

from bagel_lite.inference.flow import guidance_branches, guidance_on, guidance_scales, guided_velocity, sample
from bagel_lite.inference.progress import GenerationStopped


def test_a_straight_path_is_followed_to_the_image_exactly():
    """For x_t = (1 - t) x0 + t noise the velocity noise - x0 is constant: Euler steps on any schedule land
    on x0."""
    x0, noise = torch.randn(5, 64, dtype=torch.float64), torch.randn(5, 64, dtype=torch.float64)
    seen = []
    out = sample(lambda x, t: noise - x0, noise, num_timesteps=7, timestep_shift=3.0,
                 callback=lambda k, t, x, v: seen.append((k, t)))
    assert torch.allclose(out, x0, atol=1e-12)
    assert [k for k, _ in seen] == list(range(6)) and seen[0][1] == 1.0 and all(isinstance(t, float) for _, t in seen)


def test_a_callback_that_returns_false_stops_between_two_steps():
    with pytest.raises(GenerationStopped) as stopped:
        sample(lambda x, t: x, torch.ones(2), 10, callback=lambda k, t, x, v: k < 3)
    assert stopped.value.step == 3


def test_guidance_is_off_at_a_scale_of_one_or_less_and_image_guidance_needs_text_guidance():
    assert not guidance_on(1.0) and not guidance_on(0.5) and guidance_on(1.01)
    assert guidance_branches(4.0, 2.0) == (True, True)
    assert guidance_branches(4.0, 1.0) == (True, False)
    assert guidance_branches(1.0, 2.0) == (False, False)
    assert guidance_scales(0.3, 4.0, 2.0, (0.4, 1.0)) == (1.0, 1.0)  # outside the interval: off
    v_c, v_t, v_i = torch.randn(3, 4, 64).unbind(0)
    assert torch.equal(guided_velocity(v_c, v_t, v_i, 0.5, 3.0), v_c)


def test_seedx_guidance_follows_the_same_rule():
    from bagel_lite.seedx.detokenizer import SamplerSettings
    from bagel_lite.seedx.detokenizer import sample as seedx_sample

    def velocity(x, t, cond):
        return x * cond.mean()

    noise, cond, negative = torch.randn(1, 16, 64), torch.full((1, 3), 2.0), torch.zeros(1, 3)
    shape = (1, 16, 64)
    off = seedx_sample(velocity, cond, negative, shape, settings=SamplerSettings(4, cfg_scale=1.0), init_noise=noise)
    below = seedx_sample(velocity, cond, negative, shape, settings=SamplerSettings(4, cfg_scale=0.5), init_noise=noise)
    on = seedx_sample(velocity, cond, negative, shape, settings=SamplerSettings(4, cfg_scale=3.0), init_noise=noise)
    assert torch.equal(off, below) and not torch.equal(off, on)
