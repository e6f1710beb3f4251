"""What a running generation tells its caller, and how the caller stops it.

A sampler callback gets a ``StepInfo`` at every Euler step, a text callback a ``TokenInfo`` after every written
token; either ends the run by returning ``False``, which raises ``GenerationStopped`` between two steps (or two
tokens), so nothing is left half done.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StepInfo:
    """Handed to a sampler callback at every Euler step (before the update)."""

    step: int  # 0 .. num_timesteps - 2
    t: float  # current (shifted) flow time
    x_t: torch.Tensor  # (N, 64) noisy latent tokens
    v_cond: torch.Tensor  # (N, 64) velocity with the full context
    v_text_uncond: torch.Tensor | None  # without the last text (None when text guidance is off at this step)
    v_img_uncond: torch.Tensor | None  # without the images (None when image guidance is off)
    v: torch.Tensor  # (N, 64) guided velocity actually used


@dataclass
class TokenInfo:
    """Handed to a text callback after each written token."""

    step: int  # 0 .. max_length - 1
    token: int  # the id just chosen (the next one fed)


class GenerationStopped(Exception):
    """Raised when a callback returns ``False``: the run ended cleanly between two steps (or two tokens)."""

    def __init__(self, step: int, unit: str = "step"):
        super().__init__(f"stopped by the callback at {unit} {step}")
        self.step, self.unit = step, unit
