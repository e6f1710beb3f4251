"""The exponential moving average (EMA) of the weights: what BAGEL ships is this average, not the last step.

After every optimiser step each EMA weight moves a fraction ``1 - decay`` toward the trained weight:

    ema <- decay * ema + (1 - decay) * weight

so it averages roughly the last ``1 / (1 - decay)`` steps (0.995 -> 200). For weights that jitter around a
value with variance s^2 from step to step, the EMA's variance is ``s^2 (1 - decay) / (1 + decay)``: the noise
of the last steps is averaged away. BAGEL's release is ``ema.safetensors``; micro-BAGEL's trainer warms the
decay up, ``min(decay, (1 + step) / (10 + step))``, so that the first steps are not averaged with the random
initialisation for long.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_copy(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` to hold the average (in eval mode, no gradients)."""
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


def ema_decay(step: int, decay: float) -> float:
    """The decay used after optimiser step ``step`` (0-based): warmed up as ``(1 + step) / (10 + step)``."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model``, parameter by parameter, in place."""
    for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
        pe.lerp_(pm.detach().to(pe.dtype), 1 - decay)


def ema_variance_ratio(decay: float) -> float:
    """Var(EMA) / Var(weight) for weights that jitter independently at every step: (1 - d) / (1 + d)."""
    return (1 - decay) / (1 + decay)
