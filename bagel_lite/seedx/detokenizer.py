"""SEED-X's de-tokenizer at toy scale: N ViT embeddings -> an image, by a conditional flow-matching denoiser.

SEED-X's de-tokenizer is SDXL: a U-Net pre-trained to draw from *text*, whose cross-attention layers are
made to read ViT embeddings instead. A resampler of 64 learnable queries turns the pooled ViT embeddings
into 64 tokens of SDXL's text width, the U-Net cross-attends to them, and only the resampler and the
cross-attention keys and values (``attn2.to_k`` / ``attn2.to_v``) are trained.

Here the same plan, small:

* ``Denoiser`` — the toy "SDXL": a transformer over the 16 tokens of a micro-autoencoder latent
  (16 x 8 x 8, 2x2-patchified as BAGEL does), each block self-attention (``attn1``), cross-attention to a
  context (``attn2``) and an MLP, the flow time added to every token. It predicts the flow-matching velocity
  ``noise - x_0`` (``bagel_lite.inference.flow``'s convention: t = 1 is noise, t = 0 the image).
* ``CaptionConditioner`` — for *pre-training* the denoiser from captions: micro-BAGEL's frozen language model
  reads the caption, a linear layer maps its hidden states to the context width (SDXL's CLIP encoders).
* ``DeTokenizer`` — a ``Resampler`` over the N ViT embeddings feeding the same denoiser.
* ``sample`` — ``flow.sample``'s Euler steps from noise, with classifier-free guidance against a *negative*
  condition (SEED-X: the embeddings of an all-zero image).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..inference import flow
from ..inference.flow import add_noise, cfg_mix, guidance_on, logit_normal_timesteps
from ..inference.settings import SETTING_CHECKS, check_guidance_scale, check_settings
from ..loading.tokenizer import SpecialTokens, pad_batch
from ..model.bagel import Bagel
from ..model.patchify import patchify, unpatchify
from ..model.positions import PositionEmbedding
from ..model.timestep import TimestepEmbedder
from .llm import residual_stream
from .resampler import CrossAttention, Resampler, feed_forward


@dataclass(frozen=True)
class DenoiserConfig:
    width: int = 96
    depth: int = 4
    heads: int = 4
    context_dim: int = 96  # what attn2 reads: caption states or resampled ViT embeddings
    latent_channels: int = 16
    latent_side: int = 8  # 64-px images, downsampled 8x by the micro autoencoder
    patch: int = 2  # 2x2 latent patches, as BAGEL

    @property
    def token_dim(self) -> int:
        return self.patch * self.patch * self.latent_channels  # 64

    @property
    def tokens_per_side(self) -> int:
        return self.latent_side // self.patch  # 4


def to_tokens(latents: torch.Tensor, patch: int = 2) -> torch.Tensor:
    """(B, C, h, w) latents -> (B, h/p * w/p, p*p*C) tokens, BAGEL's patch order."""
    return torch.vmap(lambda z: patchify(z, patch))(latents)


def to_latents(tokens: torch.Tensor, cfg: DenoiserConfig) -> torch.Tensor:
    """(B, 16, 64) tokens -> (B, 16, 8, 8) latents."""
    side = cfg.tokens_per_side
    return torch.vmap(lambda x: unpatchify(x, side, side, cfg.patch, cfg.latent_channels))(tokens)


class DenoiserBlock(nn.Module):
    def __init__(self, cfg: DenoiserConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width)
        self.attn1 = CrossAttention(cfg.width, cfg.width, cfg.heads)  # self-attention among latent tokens
        self.norm2 = nn.LayerNorm(cfg.width)
        self.attn2 = CrossAttention(cfg.width, cfg.context_dim, cfg.heads)  # reads the condition
        self.ff = feed_forward(cfg.width)

    def forward(self, x, context, key_mask=None):
        h = self.norm1(x)
        x = x + self.attn1(h, h)
        x = x + self.attn2(self.norm2(x), context, key_mask)
        return x + self.ff(x)


class Denoiser(nn.Module):
    def __init__(self, cfg: DenoiserConfig):
        super().__init__()
        self.config = cfg
        self.latent_in = nn.Linear(cfg.token_dim, cfg.width)
        self.pos_embed = PositionEmbedding(cfg.tokens_per_side, cfg.width)  # frozen 2D sin-cos, as BAGEL's
        self.time_embedder = TimestepEmbedder(cfg.width)
        self.blocks = nn.ModuleList(DenoiserBlock(cfg) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(cfg.width)
        self.latent_out = nn.Linear(cfg.width, cfg.token_dim)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x_t: (B, 16, 64) noisy latent tokens; t: (B,) flow times; context: (B, M, context_dim).
        Returns the predicted velocity (B, 16, 64)."""
        positions = self.pos_embed.pos_embed  # (16, width): one fixed row per latent token, row-major
        h = self.latent_in(x_t) + positions + self.time_embedder(t)[:, None]  # (B, 16, width)
        for block in self.blocks:
            h = block(h, context, key_mask)
        return self.latent_out(self.norm_out(h))


@torch.no_grad()
def caption_states(model: Bagel, tokenizer, special: SpecialTokens, captions: list[str],
                   layers: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """What the frozen text encoder gives the denoiser: micro-BAGEL's language model reads
    ``<|im_start|> caption <|im_end|>`` and we take the residual stream after its first ``layers`` layers.

    Like SDXL reading CLIP's penultimate layer, not the last: the final norm of micro-BAGEL's understanding
    expert squeezes "left" and "right" to nearly the same vector, the inner layers keep them apart.
    Returns states (B, T, D), right-padded, and their validity (B, T).
    """
    ids, valid = pad_batch([[special.bos, *tokenizer.encode(c), special.eos] for c in captions], special.eos)
    longest = ids.shape[1]
    positions = torch.arange(longest).expand(len(captions), longest)
    causal = torch.ones(longest, longest, dtype=torch.bool).tril().expand(len(captions), 1, longest, longest)
    x = residual_stream(model, model.embed_text(ids), positions, causal, layers)  # (B, T, D)
    return x, valid


class CaptionConditioner(nn.Module):
    """Caption states of the frozen LLM (B, T, llm_width) -> context (B, T, context_dim)."""

    def __init__(self, llm_width: int, context_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(llm_width, elementwise_affine=False)  # residual-stream norms vary 10x
        self.text_proj = nn.Linear(llm_width, context_dim)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.text_proj(self.norm(states))


class DeTokenizer(nn.Module):
    """N pooled ViT embeddings (B, N, vit_dim) -> context of ``num_queries`` tokens -> the denoiser."""

    def __init__(self, cfg: DenoiserConfig, vit_dim: int, num_queries: int = 16, resampler_depth: int = 2):
        super().__init__()
        self.resampler = Resampler(vit_dim, cfg.context_dim, num_queries, width=cfg.context_dim, depth=resampler_depth,
                                   heads=cfg.heads)
        self.denoiser = Denoiser(cfg)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return self.denoiser(x_t, t, self.resampler(embeddings))

    @staticmethod
    def trains(name: str, mode: str) -> bool:
        """Whether parameter ``name`` is trained in ``mode``: "kv" (SEED-X: the resampler and every
        cross-attention's to_k / to_v) or "full" (everything but the fixed position table)."""
        if mode not in ("kv", "full"):
            raise ValueError(f"mode {mode!r} is unknown; use 'kv' (SEED-X's choice) or 'full'")
        if "pos_embed" in name:
            return False
        return mode == "full" or name.startswith("resampler.") or ".attn2.to_k." in name or ".attn2.to_v." in name

    def trainable(self, mode: str) -> list[nn.Parameter]:
        """Freeze all but what ``mode`` trains; return the trainable parameters."""
        for name, p in self.named_parameters():
            p.requires_grad_(self.trains(name, mode))
        return [p for p in self.parameters() if p.requires_grad]


# --- training and sampling --------------------------------------------------------------------------------

def flow_matching_loss(velocity: Callable, x0: torch.Tensor, generator: torch.Generator | None = None,
                       shift: float = 1.0) -> torch.Tensor:
    """MSE between ``velocity(x_t, t)`` and ``noise - x_0`` at logit-normal times. x0: (B, 16, 64) tokens."""
    t = logit_normal_timesteps(x0.shape[0], shift, generator)  # (B,)
    noise = torch.randn(x0.shape, generator=generator)
    return ((velocity(add_noise(x0, noise, t), t) - (noise - x0)) ** 2).mean()


@dataclass(frozen=True)
class SamplerSettings:
    """The de-tokenizer's sampler knobs, checked by the same rules as BAGEL's (``settings.SETTING_CHECKS``), plus
    SEED-X's own single guidance scale (``SEEDX_CHECKS``)."""

    num_timesteps: int = 25  # grid points from 1 to 0: num_timesteps - 1 Euler steps
    timestep_shift: float = 1.0
    cfg_scale: float = 3.0  # <= 1: no guidance

    def __post_init__(self):
        check_settings(self, SEEDX_CHECKS)


SEEDX_CHECKS = {**SETTING_CHECKS, "cfg_scale": lambda v: check_guidance_scale("cfg_scale", v)}  # SEED-X's one scale


def _rows(cond) -> tuple[torch.Tensor, ...]:
    return cond if isinstance(cond, tuple) else (cond,)


def sample(velocity: Callable, cond, negative, shape: tuple[int, ...], *, settings: SamplerSettings = SamplerSettings(),
           generator: torch.Generator | None = None, init_noise: torch.Tensor | None = None,
           progress: bool = False) -> torch.Tensor:
    """Draw latent tokens of ``shape`` (B, 16, 64) by ``flow.sample`` along ``velocity(x_t, t, *condition)``.

    ``cond``: a tensor with B rows, or a tuple of such tensors (e.g. caption states and their mask);
    ``negative``: the same with one row, broadcast. With guidance (``cfg_scale > 1``) the two branches run as
    one batched forward per step: ``v = v_neg + cfg_scale * (v_cond - v_neg)``.
    """
    b = shape[0]
    x = torch.randn(shape, generator=generator) if init_noise is None else init_noise.clone()
    if x.shape != torch.Size(shape):
        raise ValueError(f"init_noise has shape {tuple(x.shape)}, expected {tuple(shape)}")
    cond = _rows(cond)
    if guidance_on(settings.cfg_scale):
        both = tuple(torch.cat([c, n.expand(b, *n.shape[1:])]) for c, n in zip(cond, _rows(negative)))  # (2B, ..)

        def velocity_fn(x_t: torch.Tensor, t: float) -> torch.Tensor:
            v_c, v_n = velocity(torch.cat([x_t, x_t]), torch.full((2 * b,), t), *both).chunk(2)
            return cfg_mix(v_n, v_c, settings.cfg_scale)
    else:
        def velocity_fn(x_t: torch.Tensor, t: float) -> torch.Tensor:
            return velocity(x_t, torch.full((b,), t), *cond)
    return flow.sample(velocity_fn, x, settings.num_timesteps, settings.timestep_shift, progress=progress)
