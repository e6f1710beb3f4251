"""Interleaved inference: reading text and images into a KV cache, then writing text or drawing an image.

A **context** is what the model has read: the keys and values of every layer (the KV cache) plus two
counters — ``kv_len`` (cached tokens) and ``rope`` (the next free 1D position). Three things can be appended:

* a text segment ``<|im_start|> text <|im_end|>`` — causal, one position per token;
* an image for understanding ``<|vision_start|> ViT tokens <|vision_end|>`` — bidirectional, one position
  for the whole block;
* an image as clean VAE latents (for editing), same wrapping; its latent tokens use the generation expert.

From a context the model can **write text** (feed ``<|im_start|>``, take the argmax or a sample, repeat) or
**draw an image**: a block ``<|vision_start|> noisy latents <|vision_end|>`` is placed after the context and
denoised with Euler steps. Noisy latents are never written into the cache. Classifier-free guidance runs
the same block against up to three contexts; ``Engine.generate_image`` stacks them as one batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from PIL import Image
from tqdm.auto import tqdm

from .attention import KeyMask, causal_allowed  # noqa: F401  (causal_allowed: re-exported for notebook 04)
from .autoencoder import AutoEncoder
from .bagel import Bagel
from .flow import euler_step, guidance_scales, guided_velocity, timestep_schedule
from .patchify import patchify, position_ids, unpatchify
from .qwen2_mot import KV
from .settings import T2I_SETTINGS, ImageSettings, check_image_shape, check_init_noise, check_text_sampling
from .tokenizer import SpecialTokens, cut_generated, wrap_text
from .transforms import ImageTransform, tensor_to_pil


@dataclass(frozen=True)
class Context:
    """What the model has read so far. Cached tensors are never changed in place, so copies may share them."""

    kv_len: int = 0  # tokens in the cache
    rope: int = 0  # next free 1D RoPE position
    past: tuple[KV, ...] | None = None  # per layer: keys, values of shape (1, num_kv_heads, kv_len, head_dim)


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


class BranchBatch:
    """Several contexts padded to one length, so the CFG branches of a denoising step run as one forward.

    Built once per generation and reused at every step: padded keys/values per layer (B, Hkv, T, hd), the
    ``KeyMask`` that hides each branch's padding, and each branch's query positions (B, L).
    """

    def __init__(self, contexts: list[Context], query_len: int, device):
        longest = max(c.kv_len for c in contexts)
        self.size = len(contexts)
        self.positions = torch.tensor([[c.rope] * query_len for c in contexts], device=device)  # (B, L)
        key_valid = torch.ones(self.size, longest + query_len, dtype=torch.bool)  # (B, T + L), on the CPU
        for b, c in enumerate(contexts):
            key_valid[b, c.kv_len:longest] = False  # padding
        self.allowed = KeyMask(key_valid, query_len, causal=False, device=device)
        self.past = None
        if longest:
            full = next(c.past for c in contexts if c.past)
            self.past = [self._stack([c.past[i] if c.past else None for c in contexts], full[i], longest)
                         for i in range(len(full))]

    @staticmethod
    def _stack(kvs: list[KV | None], like: KV, length: int) -> KV:
        """Right-pad each branch's (1, Hkv, T_b, hd) keys and values to ``length`` and stack them."""
        keys, values = [], []
        for kv in kvs:
            k, v = kv if kv is not None else (like[0][:, :, :0], like[1][:, :, :0])  # an empty context
            pad = (0, 0, 0, length - k.shape[2])
            keys.append(torch.nn.functional.pad(k, pad))
            values.append(torch.nn.functional.pad(v, pad))
        return torch.cat(keys), torch.cat(values)  # (B, Hkv, length, hd) each


class Engine:
    """The model, its autoencoder and tokenizer, and the operations of interleaved inference."""

    def __init__(self, model: Bagel, ae: AutoEncoder, tokenizer, special: SpecialTokens,
                 vae_transform: ImageTransform | None = None, vit_transform: ImageTransform | None = None):
        self.model, self.ae, self.tokenizer, self.special = model, ae, tokenizer, special
        cfg = model.config
        max_gen = cfg.max_latent_size * cfg.latent_downsample
        vit_max = cfg.vit_max_num_patch_per_side * cfg.vit.patch_size
        # The official transforms, (1024, 512, 16) and (980, 224, 14), capped by what this model's tables cover.
        self.vae_transform = vae_transform or ImageTransform(min(1024, max_gen), min(512, max_gen),
                                                             cfg.latent_downsample)
        self.vit_transform = vit_transform or ImageTransform(min(980, vit_max), min(224, vit_max),
                                                             cfg.vit.patch_size)

    @property
    def device(self):  # where new rows are made: the device of the token embedding
        return self.model.language_model.model.embed_tokens.weight.device

    @property
    def dtype(self):
        return self.model.language_model.model.embed_tokens.weight.dtype

    # ------------------------------------------------------------------------------------------------------
    # Reading: text, ViT images and VAE images into a context

    def _forward(self, ctx: Context, rows: torch.Tensor, positions: torch.Tensor, gen_mask, causal: bool):
        """Run new rows (L, D) after ``ctx``'s cache. Returns hidden (L, D) and the context with them cached."""
        n = rows.shape[0]
        if int(positions.max()) >= self.model.config.llm.max_position_embeddings:
            raise ValueError(f"the context would need position {int(positions.max())}, beyond the model's "
                             f"{self.model.config.llm.max_position_embeddings}: shorten the prompt")
        allowed = KeyMask(torch.ones(1, ctx.kv_len + n, dtype=torch.bool), n, causal, self.device)
        hidden, kvs = self.model.decode(rows[None].to(self.dtype), None if gen_mask is None else gen_mask[None],
                                        positions[None], allowed, list(ctx.past) if ctx.past else None)
        return hidden[0], Context(ctx.kv_len + n, ctx.rope, tuple(kvs))

    def _markers(self) -> torch.Tensor:
        ids = torch.tensor([self.special.start_of_image, self.special.end_of_image], device=self.device)
        return self.model.embed_text(ids)  # (2, D)

    def add_text(self, ctx: Context, text: str) -> Context:
        """Append ``<|im_start|> text <|im_end|>``, causally, positions rope .. rope + n - 1."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        ids = torch.tensor(wrap_text(self.tokenizer, self.special, text), device=self.device)
        positions = ctx.rope + torch.arange(len(ids), device=self.device)
        _, new = self._forward(ctx, self.model.embed_text(ids), positions, None, causal=True)
        return replace(new, rope=ctx.rope + len(ids))

    def add_vit_image(self, ctx: Context, pixels: torch.Tensor) -> Context:
        """Append an image for understanding: (3, H, W) in [-1, 1], sides multiples of the ViT patch."""
        cfg = self.model.config
        h, w = pixels.shape[1:]
        patches = patchify(pixels, cfg.vit.patch_size).to(self.device, self.dtype)  # (n, 588)
        ids = position_ids(h, w, cfg.vit.patch_size, cfg.vit_max_num_patch_per_side, cfg.interpolate_pos)
        ids = ids.to(self.device)
        tokens = self.model.embed_vit(patches, ids, [len(ids)])  # (n, D)
        start, end = self._markers()
        rows = torch.cat([start[None], tokens, end[None]])  # (n + 2, D)
        positions = torch.full((len(rows),), ctx.rope, device=self.device)  # the whole block shares one position
        _, new = self._forward(ctx, rows, positions, None, causal=False)
        return replace(new, rope=ctx.rope + 1)

    def add_vae_image(self, ctx: Context, pixels: torch.Tensor, generator: torch.Generator | None = None) -> Context:
        """Append an image as clean latents (t = 0), routed to the generation expert; markers stay und."""
        cfg = self.model.config
        h, w = pixels.shape[1:]
        ae_device = next(self.ae.parameters()).device
        latent = self.ae.encode(pixels[None].to(ae_device), generator=generator)[0]  # (16, H/8, W/8)
        tokens = patchify(latent, cfg.latent_patch_size).to(self.device)  # (h*w, 64)
        ids = position_ids(h, w, cfg.latent_downsample, cfg.max_latent_size).to(self.device)
        rows = self._latent_rows(tokens, torch.zeros(1, device=self.device), ids, self._markers())
        positions = torch.full((len(rows),), ctx.rope, device=self.device)
        _, new = self._forward(ctx, rows, positions, self._gen_mask(len(ids)), causal=False)
        return replace(new, rope=ctx.rope + 1)

    def add_image(self, ctx: Context, image: Image.Image, vae: bool = True, vit: bool = True,
                  generator: torch.Generator | None = None) -> Context:
        """Append a PIL image: as VAE latents (if ``vae``), then as ViT tokens (if ``vit``)."""
        if vae:
            ctx = self.add_vae_image(ctx, self.vae_transform(image), generator)
        if vit:
            ctx = self.add_vit_image(ctx, self.vit_transform(image))
        return ctx

    def _latent_rows(self, x: torch.Tensor, t: torch.Tensor, ids: torch.Tensor, markers: torch.Tensor):
        """``<|vision_start|>`` + latent tokens (N, 64) embedded at flow time t + ``<|vision_end|>``."""
        start, end = markers  # (2, D) marker embeddings, computed once by the caller
        tokens = self.model.embed_latents(x.to(self.dtype), t.to(self.dtype), ids)  # (N, D)
        return torch.cat([start[None], tokens, end[None]])  # (N + 2, D)

    def _gen_mask(self, n: int) -> torch.Tensor:
        mask = torch.ones(n + 2, dtype=torch.bool, device=self.device)
        mask[0] = mask[-1] = False  # the two markers use the understanding expert
        return mask

    # ------------------------------------------------------------------------------------------------------
    # Writing text

    def generate_text(self, ctx: Context, max_length: int = 1000, do_sample: bool = False, temperature: float = 1.0,
                      generator: torch.Generator | None = None, progress: bool = False,
                      callback: Callable[[TokenInfo], object] | None = None) -> list[int]:
        """Token ids from ``<|im_start|>`` (included) up to, not including, ``<|im_end|>``; at most
        ``max_length`` ids in all. ``ctx`` itself is left unchanged. A ``callback`` that returns False stops
        the writing (``GenerationStopped``); so does reaching the model's last position before ``<|im_end|>``
        (a ``ValueError``: no answer is silently cut)."""
        limit = self.model.config.llm.max_position_embeddings
        check_text_sampling("max_length", max_length, limit, do_sample, temperature)
        token, ids = self.special.bos, []
        for step in tqdm(range(max_length), desc="text tokens", disable=not progress, leave=False):
            if ctx.rope >= limit:
                raise ValueError(f"the answer reached the model's last position ({limit}) after {step} tokens "
                                 "without finishing: shorten the prompt or the conversation (new chat)")
            ids.append(token)
            rows = self.model.embed_text(torch.tensor([token], device=self.device))
            hidden, ctx = self._forward(ctx, rows, torch.tensor([ctx.rope], device=self.device), None, causal=True)
            ctx = replace(ctx, rope=ctx.rope + 1)
            token = self._next_token(self.model.logits(hidden[-1]).float(), do_sample, temperature, generator)
            if callback is not None and callback(TokenInfo(step, token)) is False:
                raise GenerationStopped(step, "token")
            if token == self.special.eos:
                break
        return ids

    @staticmethod
    def _next_token(logits: torch.Tensor, do_sample: bool, temperature: float, generator) -> int:
        """The argmax of the (vocab,) logits, or a sample at ``temperature`` drawn with ``generator``."""
        if not do_sample:
            return int(logits.argmax())
        probs = torch.softmax(logits / temperature, dim=-1)
        return int(torch.multinomial(probs.cpu(), 1, generator=generator))

    def decode_text(self, ids: list[int]) -> str:
        return cut_generated(self.tokenizer.decode(ids))

    # ------------------------------------------------------------------------------------------------------
    # Drawing an image

    def default_image_shape(self) -> tuple[int, int]:
        """The largest square the latent position table covers, at most 1024 x 1024."""
        cfg = self.model.config
        side = min(1024, cfg.max_latent_size * cfg.latent_downsample)
        return side, side

    def check_image_shape(self, image_shape) -> tuple[int, int]:
        """(height, width) as ints, multiples of the latent stride within the latent position table."""
        cfg = self.model.config
        return check_image_shape(image_shape, cfg.latent_downsample, cfg.max_latent_size * cfg.latent_downsample)

    def generate_image(self, image_shape: tuple[int, int], gen: Context, cfg_text: Context, cfg_img: Context,
                       settings: ImageSettings = T2I_SETTINGS, init_noise: torch.Tensor | None = None,
                       generator: torch.Generator | None = None, callback: Callable[[StepInfo], object] | None = None,
                       batch_cfg: bool = True, progress: bool = True) -> torch.Tensor:
        """Denoise latent tokens from noise; returns (N, 64) float32 latent tokens of an image of image_shape."""
        cfg = self.model.config
        height, width = self.check_image_shape(image_shape)
        if not isinstance(settings, ImageSettings):
            raise TypeError(f"settings must be an ImageSettings, got {type(settings).__name__}")
        n = (height // cfg.latent_downsample) * (width // cfg.latent_downsample)
        if init_noise is None:
            init_noise = torch.randn(n, cfg.patch_latent_dim, generator=generator)  # drawn on the CPU, as official
        x = check_init_noise(init_noise, n, cfg.patch_latent_dim, (height, width)).to(self.device, torch.float32)

        # Built once per generation, reused at every step.
        ids = position_ids(height, width, cfg.latent_downsample, cfg.max_latent_size).to(self.device)
        gen_mask = self._gen_mask(n)
        markers = self._markers()
        contexts = {"cond": gen, "text": cfg_text, "img": cfg_img}
        batches: dict[tuple[str, ...], BranchBatch] = {}

        def batch(names):
            if names not in batches:
                batches[names] = BranchBatch([contexts[k] for k in names], n + 2, self.device)
            return batches[names]

        def run(names, rows):  # velocities (len(names), N, 64) of the given branches
            b = batch(names)
            hidden, _ = self.model.decode(rows[None].expand(b.size, -1, -1), gen_mask[None].expand(b.size, -1),
                                          b.positions, b.allowed, b.past)
            return self.model.velocity(hidden[:, 1:-1]).float()

        ts = timestep_schedule(settings.num_timesteps, settings.timestep_shift)
        steps = range(settings.num_timesteps - 1)
        for k in tqdm(steps, desc="denoising", disable=not progress, leave=False):
            t, t_next = float(ts[k]), float(ts[k + 1])
            s_text, s_img = guidance_scales(t, settings.cfg_text_scale, settings.cfg_img_scale, settings.cfg_interval)
            names = ("cond",) + (("text",) if s_text > 1 else ()) + (("img",) if s_text > 1 and s_img > 1 else ())
            rows = self._latent_rows(x, ts[k].reshape(1).to(self.device), ids, markers)  # (N + 2, D)
            if batch_cfg:
                vs = run(names, rows)
            else:
                vs = torch.cat([run((name,), rows) for name in names])
            v_by = dict(zip(names, vs))
            v = guided_velocity(v_by["cond"], v_by.get("text"), v_by.get("img"), s_text, s_img,
                                settings.cfg_renorm_type, settings.cfg_renorm_min)
            if callback is not None:
                info = StepInfo(k, t, x, v_by["cond"], v_by.get("text"), v_by.get("img"), v)
                if callback(info) is False:
                    raise GenerationStopped(k)
            x = euler_step(x, v, t, t_next)
        return x

    def decode_latents(self, tokens: torch.Tensor, image_shape: tuple[int, int]) -> torch.Tensor:
        """(N, 64) latent tokens -> (1, 3, H, W) decoded image in about [-1, 1]."""
        cfg = self.model.config
        rows, cols = image_shape[0] // cfg.latent_downsample, image_shape[1] // cfg.latent_downsample
        latent = unpatchify(tokens, rows, cols, cfg.latent_patch_size, cfg.latent_channels)  # (16, H/8, W/8)
        ae_device = next(self.ae.parameters()).device
        return self.ae.decode(latent[None].to(ae_device, torch.float32))

    def decode_image(self, tokens: torch.Tensor, image_shape: tuple[int, int]) -> Image.Image:
        return tensor_to_pil(self.decode_latents(tokens, image_shape)[0])
