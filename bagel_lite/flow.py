"""Flow matching, the way BAGEL samples images: a schedule, an Euler step, and classifier-free guidance.

Convention (as in BAGEL and minimal rectified-flow code; the opposite of facebookresearch/flow_matching):

    x_t = (1 - t) * x_0 + t * noise        t = 1 is pure noise, t = 0 is the image
    v   = d x_t / d t = noise - x_0         what the model predicts (points from the image to the noise)

Sampling walks t from 1 down to 0 with Euler steps ``x <- x - v * (t_k - t_k+1)``.

Guidance mixes up to three velocities of the same noisy latents seen in three contexts:
``v_c`` (full context), ``v_text`` (without the last text) and ``v_img`` (without the images). Text guidance
comes first, then image guidance, and a *renorm* keeps the guided velocity from growing larger than the
conditional one.
"""

from __future__ import annotations

import torch

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


def guidance_scales(t: float, cfg_text_scale: float, cfg_img_scale: float, cfg_interval) -> tuple[float, float]:
    """The (text, image) scales in force at flow time t: the user's inside ``lo < t <= hi``, else 1 (off)."""
    lo, hi = cfg_interval
    return (cfg_text_scale, cfg_img_scale) if lo < t <= hi else (1.0, 1.0)


def _norm_ratio(reference: torch.Tensor, guided: torch.Tensor, per_token: bool, rmin: float) -> torch.Tensor:
    if per_token:  # one ratio per latent token, over its 64 channels -> (N, 1)
        ratio = reference.norm(dim=-1, keepdim=True) / (guided.norm(dim=-1, keepdim=True) + 1e-8)
    else:  # one ratio for the whole packed tensor (Frobenius norms)
        ratio = reference.norm() / (guided.norm() + 1e-8)
    return ratio.clamp(min=rmin, max=1.0)


def guided_velocity(v_c: torch.Tensor, v_text: torch.Tensor | None, v_img: torch.Tensor | None,
                    text_scale: float, img_scale: float, renorm_type: str = "global",
                    renorm_min: float = 0.0) -> torch.Tensor:
    """Combine the branch velocities (each (N, 64)) into the one used for the Euler step.

    No text guidance (``text_scale <= 1``) means no guidance at all: ``v_c`` is returned, and image guidance
    is skipped too, exactly as in the official code.
    """
    if text_scale <= 1.0:
        return v_c
    guided = v_text + text_scale * (v_c - v_text)
    if renorm_type == "text_channel":  # renorm the text-guided velocity per token, then image guidance
        guided = guided * _norm_ratio(v_c, guided, per_token=True, rmin=renorm_min)
        return v_img + img_scale * (guided - v_img) if img_scale > 1.0 else guided
    if img_scale > 1.0:
        guided = v_img + img_scale * (guided - v_img)
    if renorm_type not in ("global", "channel"):
        raise ValueError(f"cfg_renorm_type {renorm_type!r} is unknown; use one of {RENORM_TYPES}")
    return guided * _norm_ratio(v_c, guided, per_token=renorm_type == "channel", rmin=renorm_min)


def euler_step(x: torch.Tensor, v: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """One step toward the image: ``x - v * (t - t_next)`` (t decreases)."""
    return x - v * (t - t_next)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The training interpolation ``(1 - t) * x0 + t * noise``; t broadcasts over each token's channels."""
    t = t.reshape(-1, *([1] * (x0.ndim - 1)))
    return (1 - t) * x0 + t * noise
