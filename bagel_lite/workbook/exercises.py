"""Hidden answers for the workbook's exercises.

An exercise's check cell calls ``check("03.2", prediction)``: the truth is *computed* here, with the package's
own code, and compared by ``viz.check_prediction``, which answers "Right." or "Not yet. Hint: ..." and never
prints it. Keeping the computation out of the notebook keeps the answer out of the check cell's visible source.
(Reading this file is allowed, of course — it is the answer sheet.)
"""

from __future__ import annotations

import torch

from .viz import check_prediction


def _bisect(f, lo: float, hi: float, steps: int = 60) -> float:
    """The root of an increasing or decreasing ``f`` between ``lo`` and ``hi``."""
    flo = f(lo)
    for _ in range(steps):
        mid = (lo + hi) / 2
        if (f(mid) > 0) == (flo > 0):
            lo, flo = mid, f(mid)
        else:
            hi = mid
    return (lo + hi) / 2


def _latent_tokens(width: int, height: int) -> int:
    from ..model.patchify import patchify

    return len(patchify(torch.zeros(16, height // 8, width // 8), 2))


def _snr(t: float, sigma: float) -> float:
    return ((1 - t) * sigma / t) ** 2


def _std_of_xt(t: float) -> float:
    from ..inference.flow import add_noise

    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(400_000, generator=g), torch.randn(400_000, generator=g)
    return float(add_noise(x0, eps, torch.tensor([t])).std())


def _u_at_snr_one(shift: float) -> float:
    from ..inference.flow import timestep_schedule  # t(u) = s u / (1 + (s - 1) u); SNR of unit latents is 1 at t = 1/2

    def t_of(u):
        return float(shift * u / (1 + (shift - 1) * u))

    assert abs(float(timestep_schedule(3, shift)[1]) - t_of(0.5)) < 1e-6  # the same formula as the sampler
    return _bisect(lambda u: _snr(t_of(u), 1.0) - 1.0, 1e-6, 1 - 1e-6)


def _mse_at_step0(x0: torch.Tensor, factor: float) -> float:
    # v-hat = 0: E[(eps - factor * x0)^2], eps independent of x0 with unit variance
    return 1.0 + factor**2 * float(x0.pow(2).mean())


EXERCISES = {
    "03.1": (lambda: _latent_tokens(768, 512), "the latent is 1/8 of each side; one token per 2x2 latent cells", 1e-6),
    "03.2": (lambda: _bisect(lambda t: _snr(t, 2.0) - 1.0, 1e-6, 1 - 1e-6), "solve (1 - t)·σ = t for t", 1e-3),
    "03.3": (lambda: _std_of_xt(0.5), "variances of independent parts add: (1 - t)² + t²", 0.01),
    "03.4": (lambda: _u_at_snr_one(3.0), "unit latents have SNR 1 at t = 0.5; solve 3u / (1 + 2u) = 0.5 for u", 1e-3),
}


def check(exercise: str, prediction, **data) -> bool | None:
    """Compare ``prediction`` with the computed answer of ``exercise`` ("03.1", ...); prints right or a hint."""
    if exercise == "05b.1":
        truth = _mse_at_step0(data["x0"], 2.0)
        return check_prediction(prediction, truth, tol=0.05,
                                hint="v̂ = 0, so the loss is E[(ε − 2x₀)²]; expand the square: ε and x₀ are "
                                     "independent, E[ε²] = 1, and E[x₀²] was printed in section 2")
    truth_fn, hint, tol = EXERCISES[exercise]
    return check_prediction(prediction, truth_fn() if prediction is not None else None, hint=hint, tol=tol)
