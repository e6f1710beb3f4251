"""Every setting of a generation, checked in one place before any compute.

``ImageSettings`` holds the sampler knobs under their official names (``cfg_text_scale`` from the playground
slider down to the velocity). The functions below check the rest of a call: the seed, the output size, the
prompt text, the text-sampling knobs and an initial noise. Each returns the value in plain form or raises a
``TypeError`` / ``ValueError`` naming the parameter, the bad value and the allowed range (see ``checks.py``).

=====================  ==================================  ========================================
setting                allowed                             meaning
=====================  ==================================  ========================================
cfg_text_scale         finite, 0 .. 100                    text guidance; <= 1 switches guidance off
cfg_img_scale          finite, 0 .. 100                    image guidance; <= 1 switches it off
cfg_interval           two numbers, 0 <= lo <= hi <= 1     guidance only for lo < t <= hi
timestep_shift         finite, 0.05 .. 100                 1 = no shift, 3 = default
num_timesteps          integer, 2 .. 1000                  grid points (one fewer Euler steps)
cfg_renorm_type        global, channel, text_channel
cfg_renorm_min         finite, 0 .. 1                      1 switches renorm off
seed                   integer, 0 .. 2**64 - 1             None draws one (and records it)
temperature            finite, 0.01 .. 100                 only when sampling text
=====================  ==================================  ========================================
"""

from __future__ import annotations

import difflib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch

from ..model.checks import check_bool, check_choice, check_float, check_int
from .flow import RENORM_TYPES

MAX_SEED = 2**64 - 1  # what torch.Generator.manual_seed accepts
SCALE_RANGE = (0.0, 100.0)
SHIFT_RANGE = (0.05, 100.0)
TEMPERATURE_RANGE = (0.01, 100.0)
MAX_TIMESTEPS = 1000


def check_interval(value) -> tuple[float, float]:
    rule = "cfg_interval must be two numbers 0 <= lo <= hi <= 1"
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{rule}, such as (0.4, 1.0); got {value!r} ({type(value).__name__})")
    if len(value) != 2:
        raise ValueError(f"{rule}, such as (0.4, 1.0); got {len(value)} numbers: {tuple(value)!r}")
    try:
        lo, hi = (check_float(f"cfg_interval[{i}]", v, 0.0, 1.0) for i, v in enumerate(value))
    except (TypeError, ValueError) as e:
        raise type(e)(f"{rule}; got {tuple(value)!r}: {e}") from None
    if lo > hi:
        raise ValueError(f"{rule}; got lo {lo} > hi {hi}")
    return lo, hi


def check_guidance_scale(name: str, value) -> float:
    """A guidance scale: a finite number in ``SCALE_RANGE``; <= 1 switches that guidance off."""
    return check_float(name, value, *SCALE_RANGE, " (<= 1: no guidance)")


SETTING_CHECKS = {  # every sampler setting's rule, by its name; each returns the value in plain form
    "cfg_text_scale": lambda v: check_guidance_scale("cfg_text_scale", v),
    "cfg_img_scale": lambda v: check_guidance_scale("cfg_img_scale", v),
    "cfg_interval": check_interval,
    "timestep_shift": lambda v: check_float("timestep_shift", v, *SHIFT_RANGE, " (1 = no shift)"),
    "num_timesteps": lambda v: check_int("num_timesteps", v, 2, MAX_TIMESTEPS),
    "cfg_renorm_type": lambda v: check_choice("cfg_renorm_type", v, RENORM_TYPES),
    "cfg_renorm_min": lambda v: check_float("cfg_renorm_min", v, 0.0, 1.0, " (1 switches renorm off)"),
}


def check_settings(settings, checks: dict | None = None) -> None:
    """Check every field of a frozen settings dataclass by its rule in ``checks`` (default ``SETTING_CHECKS``)
    and store it in plain form (floats, a tuple, an int). Called by ``__post_init__``: a settings object that
    exists is valid."""
    checks = SETTING_CHECKS if checks is None else checks
    for f in fields(settings):
        object.__setattr__(settings, f.name, checks[f.name](getattr(settings, f.name)))


@dataclass(frozen=True)
class ImageSettings:
    """Sampler settings (official names). ``num_timesteps`` counts grid points: one fewer Euler steps."""

    cfg_text_scale: float = 4.0
    cfg_img_scale: float = 1.0
    cfg_interval: tuple[float, float] = (0.4, 1.0)
    timestep_shift: float = 3.0
    num_timesteps: int = 50
    cfg_renorm_type: str = "global"
    cfg_renorm_min: float = 0.0

    def __post_init__(self):
        check_settings(self)


T2I_SETTINGS = ImageSettings()
EDIT_SETTINGS = ImageSettings(cfg_img_scale=2.0, cfg_interval=(0.0, 1.0), cfg_renorm_type="text_channel")
SETTING_NAMES = tuple(f.name for f in fields(ImageSettings))


def image_settings(defaults: ImageSettings, overrides: dict) -> ImageSettings:
    """``defaults`` with the caller's keyword overrides; an unknown name is refused with the closest one."""
    for name in overrides:
        if name not in SETTING_NAMES:
            close = difflib.get_close_matches(name, SETTING_NAMES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"unknown setting {name!r}{hint}; the sampler settings are {', '.join(SETTING_NAMES)}")
    return replace(defaults, **overrides)


def make_generator(seed: int | None) -> tuple[int, torch.Generator]:
    """The seed (drawn when None, from the OS: no global random state) and a CPU generator seeded with it."""
    seed = secrets.randbelow(2**31) if seed is None else check_int("seed", seed, 0, MAX_SEED)
    return seed, torch.Generator().manual_seed(seed)


def check_image_shape(shape, step: int, largest: int) -> tuple[int, int]:
    """(height, width) as two integers, multiples of ``step`` between ``step`` and ``largest``."""
    rule = f"image_shape must be (height, width), two integers, multiples of {step} between {step} and {largest}"
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence) or len(shape) != 2:
        raise TypeError(f"{rule} for this model; got {shape!r}")
    try:
        height, width = (check_int(f"image_shape[{i}]", v, step, largest) for i, v in enumerate(shape))
    except (TypeError, ValueError) as e:
        raise type(e)(f"{rule} for this model; got {tuple(shape)!r}: {e}") from None
    if height % step or width % step:
        raise ValueError(f"{rule} for this model; got ({height}, {width})")
    return height, width


def check_text(name: str, text) -> str:
    """A prompt, question or message: a non-empty string of valid Unicode."""
    if not isinstance(text, str):
        hint = " (did you swap the image and the text?)" if hasattr(text, "size") else ""
        raise TypeError(f"{name} must be a string{hint}, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"the {name} is empty: write what to draw, edit or ask")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"the {name} holds an unpaired surrogate {text[e.start]!r} at character {e.start}: it is "
                         "not valid Unicode (text decoded with errors='surrogateescape'?); remove or re-decode it"
                         ) from None
    return text


def check_text_sampling(max_name: str, max_tokens, limit: int, do_sample, temperature) -> None:
    """The knobs of writing text; ``max_name`` is the caller's name for the token limit."""
    check_int(max_name, max_tokens, 1, limit)
    if check_bool("do_sample", do_sample):
        check_float("temperature", temperature, *TEMPERATURE_RANGE, " when sampling (temperature must be > 0)")


def check_init_noise(noise, n: int, dim: int, shape: tuple[int, int]) -> torch.Tensor:
    """A finite float tensor of shape (n, dim): the latent tokens at t = 1 of an image of ``shape``."""
    if not isinstance(noise, torch.Tensor) or not noise.is_floating_point():
        raise TypeError(f"init_noise must be a float torch.Tensor of shape ({n}, {dim}), got {type(noise).__name__}"
                        + (f" of {noise.dtype}" if isinstance(noise, torch.Tensor) else ""))
    if tuple(noise.shape) != (n, dim):
        raise ValueError(f"init_noise must have shape ({n}, {dim}) for a {shape[0]}x{shape[1]} image, "
                         f"got {tuple(noise.shape)}")
    if not bool(torch.isfinite(noise).all()):
        raise ValueError("init_noise holds NaN or infinite values: pass finite noise (e.g. torch.randn)")
    return noise
