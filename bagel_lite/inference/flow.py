"""Flow matching, the way BAGEL samples images: a schedule, an Euler step, and classifier-free guidance.

Convention (as in BAGEL and minimal rectified-flow code; the opposite of facebookresearch/flow_matching):

    x_t = (1 - t) * x_0 + t * noise        t = 1 is pure noise, t = 0 is the image
    v   = d x_t / d t = noise - x_0         what the model predicts (points from the image to the noise)

Sampling walks t from 1 down to 0 with Euler steps ``x <- x - v * (t_k - t_k+1)``: ``sample`` is that one
loop, used by BAGEL's denoising (``denoising.py``) and by SEED-X's de-tokenizer, each handing it a velocity.

Guidance mixes up to three velocities of the same noisy latents seen in three contexts:
``v_c`` (full context), ``v_text`` (without the last text) and ``v_img`` (without the images). Text guidance
comes first, then image guidance, and a *renorm* keeps the guided velocity from growing larger than the
conditional one. The rules of guidance are written here once: a scale <= 1 switches guidance off
(``guidance_on``), image guidance needs text guidance (``guidance_branches``), and outside ``cfg_interval``
both scales are 1 (``guidance_scales``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from .progress import GenerationStopped

RENORM_TYPES = ("global", "channel", "text_channel")


def timestep_schedule(num_timesteps: int, shift: float) -> torch.Tensor:
    """``num_timesteps`` grid points from 1 to 0, shifted: ``t = s*u / (1 + (s-1)*u)``. (num_timesteps,) float32.

    A shift s > 1 spends more of the steps at high noise (s = 3, u = 0.5 gives t = 0.75). Only the first
    ``num_timesteps - 1`` points are evaluated by the model: that many Euler steps.
    """
    u = torch.linspace(1, 0, num_timesteps)
    return shift * u / (1 + (shift - 1) * u)


def logit_normal_timesteps(n: int, shift: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training times: ``sigmoid(N(0, 1))``, then the same shift as sampling. (n,) float32."""
    t = torch.sigmoid(torch.randn(n, generator=generator))
    return shift * t / (1 + (shift - 1) * t)


def guidance_on(scale: float) -> bool:
    """Guidance at a scale <= 1 is switched off (``uncond + 1 * (cond - uncond)`` is just ``cond``)."""
    return scale > 1.0


def guidance_branches(cfg_text_scale: float, cfg_img_scale: float) -> tuple[bool, bool]:
    """Which unconditional velocities a step needs: (without the text, without the images). As in the
    official code, image guidance runs only together with text guidance."""
    text = guidance_on(cfg_text_scale)
    return text, text and guidance_on(cfg_img_scale)


def guidance_scales(t: float, cfg_text_scale: float, cfg_img_scale: float, cfg_interval) -> tuple[float, float]:
    """The (text, image) scales in force at flow time t: the user's inside ``lo < t <= hi``, else 1 (off)."""
    lo, hi = cfg_interval
    return (cfg_text_scale, cfg_img_scale) if lo < t <= hi else (1.0, 1.0)


def cfg_mix(v_uncond: torch.Tensor, v_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``v_uncond + scale * (v_cond - v_uncond)`` (scale 1 gives ``v_cond``)."""
    return v_uncond + scale * (v_cond - v_uncond)


def _norm_ratio(reference: torch.Tensor, guided: torch.Tensor, per_token: bool, rmin: float) -> torch.Tensor:
    if per_token:  # one ratio per latent token, over its 64 channels -> (N, 1)
        ratio = reference.norm(dim=-1, keepdim=True) / (guided.norm(dim=-1, keepdim=True) + 1e-8)
    else:  # one ratio for the whole packed tensor (Frobenius norms)
        ratio = reference.norm() / (guided.norm() + 1e-8)
    return ratio.clamp(min=rmin, max=1.0)


def guided_velocity(v_c: torch.Tensor, v_text: torch.Tensor | None, v_img: torch.Tensor | None,
                    cfg_text_scale: float, cfg_img_scale: float, *, cfg_renorm_type: str = "global",
                    cfg_renorm_min: float = 0.0) -> torch.Tensor:
    """Combine the branch velocities (each (N, 64)) into the one used for the Euler step.

    No text guidance (``cfg_text_scale <= 1``) means no guidance at all: ``v_c`` is returned, and image
    guidance is skipped too, exactly as in the official code.
    """
    text, image = guidance_branches(cfg_text_scale, cfg_img_scale)
    if not text:
        return v_c
    guided = cfg_mix(v_text, v_c, cfg_text_scale)
    if cfg_renorm_type == "text_channel":  # renorm the text-guided velocity per token, then image guidance
        guided = guided * _norm_ratio(v_c, guided, per_token=True, rmin=cfg_renorm_min)
        return cfg_mix(v_img, guided, cfg_img_scale) if image else guided
    if image:
        guided = cfg_mix(v_img, guided, cfg_img_scale)
    if cfg_renorm_type not in ("global", "channel"):
        raise ValueError(f"cfg_renorm_type {cfg_renorm_type!r} is unknown; use one of {RENORM_TYPES}")
    return guided * _norm_ratio(v_c, guided, per_token=cfg_renorm_type == "channel", rmin=cfg_renorm_min)


def euler_step(x: torch.Tensor, v: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """One step toward the image: ``x - v * (t - t_next)`` (t decreases)."""
    return x - v * (t - t_next)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The training interpolation ``(1 - t) * x0 + t * noise``; t broadcasts over each token's channels."""
    t = t.reshape(-1, *([1] * (x0.ndim - 1)))
    return (1 - t) * x0 + t * noise


@torch.no_grad()
def sample(velocity_fn: Callable[[torch.Tensor, float], torch.Tensor], noise: torch.Tensor, num_timesteps: int,
           timestep_shift: float = 1.0, *, callback: Callable | None = None, progress: bool = False) -> torch.Tensor:
    """The sampling loop: Euler steps from ``noise`` (t = 1) to the image (t = 0) along ``velocity_fn(x, t)``.

    ``num_timesteps`` grid points of ``timestep_schedule`` give ``num_timesteps - 1`` steps; t is handed to
    ``velocity_fn`` as a Python float. ``callback(step, t, x, v)`` sees each step before its update; returning
    ``False`` ends the run between two steps (``GenerationStopped``). Guidance lives in ``velocity_fn``.
    """
    ts = timestep_schedule(num_timesteps, timestep_shift)
    x = noise
    for k in tqdm(range(num_timesteps - 1), desc="denoising", disable=not progress, leave=False):
        t, t_next = float(ts[k]), float(ts[k + 1])
        v = velocity_fn(x, t)
        if callback is not None and callback(k, t, x, v) is False:
            raise GenerationStopped(k)
        x = euler_step(x, v, t, t_next)
    return x
