"""The small pieces of every training loop here (micro-BAGEL's and SEED-X's): the learning-rate schedule and
one optimiser step, and the CPU thread count a run uses. (The EMA of the weights is ``ema.py``.)"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def cosine_lr(step: int, total: int, peak: float, warmup: int, floor: float) -> float:
    """Linear warm-up to ``peak``, then a cosine down to ``floor * peak``."""
    return peak * min(1.0, (step + 1) / warmup) * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * step / total)))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """The learning rate of every parameter group, for the next step."""
    for group in opt.param_groups:
        group["lr"] = lr


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, clip: list | None = None,
                   max_norm: float = 1.0) -> None:
    """Gradients of ``loss`` (old ones dropped), clipped to ``max_norm`` over the parameters ``clip`` (if
    given), then one step of ``opt``."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(clip, max_norm)
    opt.step()


@contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op CPU threads (``None`` or 0: leave it), then put the old count back.

    The count is process-wide and changes results in their last bits (a convolution sums in another order on
    1 thread than on 2), so a training run must not leave it changed for whatever runs next."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
