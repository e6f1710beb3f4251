"""Drawing an image after the contexts of guidance: latent tokens denoised from noise by ``flow.sample``.

A block ``<|vision_start|> noisy latents <|vision_end|>`` is placed after each context and the model predicts
its velocity; noisy latents are never written into a cache. ``GuidedVelocity`` is BAGEL's ``velocity_fn``:
it reads the block against up to three contexts, keyed ``"cond"`` (the full one: a conversation's ``gen``),
``"text"`` (without the last text: ``cfg_text``) and ``"img"`` (without images: ``cfg_img``) — stacked as one
batch (``BranchBatch``), and mixes them by ``flow.guided_velocity``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image

from ..loading.transforms import tensor_to_pil
from ..model.masks import KeyMask
from ..model.patchify import image_position_ids, unpatchify
from ..model.qwen2_mot import KV
from .contexts import Context, Reader
from .flow import guidance_branches, guidance_scales, guided_velocity, sample
from .progress import StepInfo
from .settings import T2I_SETTINGS, ImageSettings, check_image_shape, check_init_noise


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
            self.past = [self.stack([c.past[i] if c.past else None for c in contexts], full[i], longest)
                         for i in range(len(full))]

    @staticmethod
    def stack(kvs: list[KV | None], like: KV, length: int) -> KV:
        """Right-pad each branch's (1, Hkv, T_b, hd) keys and values to ``length`` and stack them."""
        keys, values = [], []
        for kv in kvs:
            k, v = kv if kv is not None else (like[0][:, :, :0], like[1][:, :, :0])  # an empty context
            pad = (0, 0, 0, length - k.shape[2])
            keys.append(torch.nn.functional.pad(k, pad))
            values.append(torch.nn.functional.pad(v, pad))
        return torch.cat(keys), torch.cat(values)  # (B, Hkv, length, hd) each


class GuidedVelocity:
    """BAGEL's ``velocity_fn(x, t)``: the noisy latents read after each context that guidance needs at t,
    mixed into one velocity. ``branches`` keeps the last step's velocities by branch (for callbacks)."""

    def __init__(self, reader: Reader, image_shape: tuple[int, int], contexts: dict[str, Context],
                 settings: ImageSettings, batch_cfg: bool = True):
        self.reader, self.contexts, self.settings, self.batch_cfg = reader, contexts, settings, batch_cfg
        height, width = image_shape
        latent_downsample = reader.model.config.latent_downsample
        self.n = (height // latent_downsample) * (width // latent_downsample)
        # Built once per generation, reused at every step.
        self.ids = image_position_ids(reader.model.config, image_shape, "vae").to(reader.device)
        self.gen_mask = reader.generation_mask(self.n)
        self.markers = reader.marker_rows()
        self.batches: dict[tuple[str, ...], BranchBatch] = {}
        self.branches: dict[str, torch.Tensor] = {}

    def run(self, names: tuple[str, ...], rows: torch.Tensor) -> torch.Tensor:
        """Velocities (len(names), N, 64) of the given branches, in one forward."""
        if names not in self.batches:
            contexts = [self.contexts[k] for k in names]
            self.batches[names] = BranchBatch(contexts, self.n + 2, self.reader.device)
        b, model = self.batches[names], self.reader.model
        hidden, _ = model.hidden_states(rows[None].expand(b.size, -1, -1), self.gen_mask[None].expand(b.size, -1),
                                        b.positions, b.allowed, b.past)  # (B, N + 2, D)
        return model.velocity(hidden[:, 1:-1]).float()

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        s = self.settings
        cfg_text_scale, cfg_img_scale = guidance_scales(t, s.cfg_text_scale, s.cfg_img_scale, s.cfg_interval)
        text, image = guidance_branches(cfg_text_scale, cfg_img_scale)
        names = ("cond",) + (("text",) if text else ()) + (("img",) if image else ())
        t_row = torch.tensor([t], dtype=torch.float32, device=self.reader.device)
        rows = self.reader.latent_rows(x, t_row, self.ids, self.markers)  # (N + 2, D)
        vs = self.run(names, rows) if self.batch_cfg else torch.cat([self.run((name,), rows) for name in names])
        self.branches = dict(zip(names, vs))
        return guided_velocity(self.branches["cond"], self.branches.get("text"), self.branches.get("img"),
                               cfg_text_scale, cfg_img_scale, cfg_renorm_type=s.cfg_renorm_type,
                               cfg_renorm_min=s.cfg_renorm_min)


@dataclass(frozen=True)
class Drawn:
    """What a model drew: its (N, 64) latent tokens, the decoded picture and the (height, width) it was drawn at."""

    latents: torch.Tensor
    image: Image.Image
    image_shape: tuple[int, int]


class ImageDrawer:
    """Drawing images with a ``Reader``'s model and autoencoder: the output size, denoising, decoding."""

    def __init__(self, reader: Reader):
        self.reader = reader

    def image_shape(self, image_shape=None, source: Image.Image | None = None) -> tuple[int, int]:
        """The (height, width) an image is drawn at -- the one rule for every caller: ``image_shape`` when given
        (checked: multiples of the latent stride, within the latent position table); else the size the VAE
        transform gives ``source`` (an edit keeps its input's size); else the largest square the table covers,
        at most 1024 x 1024."""
        cfg = self.reader.model.config
        largest = cfg.max_latent_size * cfg.latent_downsample
        if image_shape is None and source is not None:
            image_shape = self.reader.vae_transform.size_of(source)
        if image_shape is None:
            image_shape = (min(1024, largest),) * 2
        return check_image_shape(image_shape, cfg.latent_downsample, largest)

    def draw(self, contexts: dict[str, Context], *, image_shape: tuple[int, int] | None = None,
             settings: ImageSettings = T2I_SETTINGS, generator: torch.Generator | None = None,
             init_noise: torch.Tensor | None = None, callback: Callable[[StepInfo], object] | None = None,
             batch_cfg: bool = True, progress: bool = True) -> Drawn:
        """Denoise latent tokens from noise after ``contexts`` (``"cond"``, ``"text"``, ``"img"``: the full one,
        the one without the last text, the one without images) and decode them: the (N, 64) float32 latent
        tokens, the picture and its (height, width) (``image_shape``; the default when None). ``callback`` gets
        a ``StepInfo`` at every step; returning False stops (``GenerationStopped``)."""
        r, cfg = self.reader, self.reader.model.config
        image_shape = self.image_shape(image_shape)
        if not isinstance(settings, ImageSettings):
            raise TypeError(f"settings must be an ImageSettings, got {type(settings).__name__}")
        velocity = GuidedVelocity(r, image_shape, contexts, settings, batch_cfg)
        if init_noise is None:
            init_noise = torch.randn(velocity.n, cfg.patch_latent_dim, generator=generator)  # on the CPU, as official
        x = check_init_noise(init_noise, velocity.n, cfg.patch_latent_dim, image_shape).to(r.device, torch.float32)

        def on_step(k, t, x_t, v):
            b = velocity.branches
            return callback(StepInfo(k, t, x_t, b["cond"], b.get("text"), b.get("img"), v))

        latents = sample(velocity, x, settings.num_timesteps, settings.timestep_shift,
                         callback=on_step if callback is not None else None, progress=progress)
        return Drawn(latents, self.decode_image(latents, image_shape), image_shape)

    def decode_latents(self, tokens: torch.Tensor, image_shape: tuple[int, int]) -> torch.Tensor:
        """(N, 64) latent tokens -> (1, 3, H, W) decoded image in about [-1, 1]."""
        cfg, ae = self.reader.model.config, self.reader.ae
        rows, cols = image_shape[0] // cfg.latent_downsample, image_shape[1] // cfg.latent_downsample
        latent = unpatchify(tokens, rows, cols, cfg.latent_patch_size, cfg.latent_channels)  # (16, H/8, W/8)
        return ae.decode(latent[None].to(next(ae.parameters()).device, torch.float32))

    def decode_image(self, tokens: torch.Tensor, image_shape: tuple[int, int]) -> Image.Image:
        """(N, 64) latent tokens -> the decoded PIL image."""
        return tensor_to_pil(self.decode_latents(tokens, image_shape)[0])
