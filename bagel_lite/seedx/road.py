"""The SEED-X road, assembled from shipped weights: reconstruct an image from N ViT embeddings, or draw one
from a caption through the LLM's regressed embeddings.

    from bagel_lite.seedx import load
    seedx = load()                                     # micro-BAGEL's ViT/autoencoder/LLM + bagel_lite/seedx/checkpoint
    seedx.reconstruct([image], n=16)                   # image -> ViT -> pool to 16 -> de-tokenizer -> image
    seedx.generate(["a red circle on the left"])       # caption -> LLM + 16 queries -> de-tokenizer -> image

Files of a SEED-X folder (all written by ``python -m bagel_lite.seedx ablate``):

* ``config.json`` — sizes and sampler settings;
* ``visual_stats.safetensors`` — mean and std of the pooled embeddings (per N), measured on training scenes;
* ``base.safetensors`` — the caption-conditioned denoiser (the toy SDXL) and its caption projection;
* ``detokenizer_n{N}.safetensors`` — what adapting the base to N embeddings trained (resampler + to_k/to_v);
  ``detokenizer_n16_full.safetensors`` — the fully fine-tuned variant;
* ``regressor_n{N}.safetensors`` / ``regressor_n16_deep.safetensors`` — LoRA, norms, queries and output head
  (one-layer cross-attention / multi-layer resampler);
* ``metrics.json`` — what the ablation measured.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from ..loading.checkpoint import CheckpointError
from ..loading.transforms import pil_img2rgb, tensor_to_pil
from .detokenizer import (
    CaptionConditioner,
    Denoiser,
    DenoiserConfig,
    DeTokenizer,
    SamplerSettings,
    caption_states,
    sample,
    to_latents,
)
from .llm import QueryRegressor
from .visual_tokenizer import N_CHOICES, check_n, gray_image, pool, standardize, vit_grid

CHECKPOINT = Path(__file__).resolve().parent / "checkpoint"
BASE = Path(__file__).resolve().parent / "base"  # micro-BAGEL v1: the frozen towers SEED-X was trained on
HEADS = {"cross": 1, "deep": 4}  # output head -> depth: one-layer cross-attention, multi-layer resampler
MODES = ("kv", "full")


def base_holder(denoiser: torch.nn.Module, conditioner: torch.nn.Module) -> torch.nn.ModuleDict:
    """The modules stored in ``base.safetensors`` (keys ``denoiser.*``, ``conditioner.*``)."""
    return torch.nn.ModuleDict({"denoiser": denoiser, "conditioner": conditioner})


def detokenizer_file(n: int, mode: str = "kv") -> str:
    return f"detokenizer_n{n}.safetensors" if mode == "kv" else f"detokenizer_n{n}_{mode}.safetensors"


def regressor_file(n: int, head: str = "cross") -> str:
    return f"regressor_n{n}.safetensors" if head == "cross" else f"regressor_n{n}_{head}.safetensors"


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Shipped weights are stored in float16 (half the bytes); they are used in float32."""
    save_file({k: v.detach().to(torch.float16).contiguous() for k, v in tensors.items()}, str(path))


def load_into(module: torch.nn.Module, path: Path, expected: set[str] | None = None) -> None:
    """Load ``path`` into ``module``; the file must hold exactly ``expected`` keys (default: all of them)."""
    if not path.is_file():
        raise CheckpointError(f"{path.name} is missing from {path.parent}: run `python -m bagel_lite.seedx ablate "
                              f"--out {path.parent}` to train it")
    tensors = {k: v.float() for k, v in load_file(str(path)).items()}
    expected = set(module.state_dict()) if expected is None else expected
    missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or extra:
        raise CheckpointError(f"{path.name} does not match the model: missing {missing[:4]}, unexpected {extra[:4]} "
                              f"({len(missing)} missing, {len(extra)} unexpected); was it written by another "
                              f"version of the ablation?")
    state = module.state_dict()
    for k, v in tensors.items():
        if state[k].shape != v.shape:
            raise CheckpointError(f"{path.name}: {k} has shape {tuple(v.shape)}, the model expects "
                                  f"{tuple(state[k].shape)}")
    module.load_state_dict(tensors, strict=False)


class SeedX:
    """The toy SEED-X, built on a micro-BAGEL pipeline (its ViT, autoencoder, language model, tokenizer)."""

    def __init__(self, pipe, folder: str | Path = CHECKPOINT):
        self.pipe, self.folder = pipe, Path(folder)
        if not (self.folder / "config.json").is_file():
            raise CheckpointError(f"no SEED-X folder at {self.folder} (config.json missing): run "
                                  f"`python -m bagel_lite.seedx ablate --out {self.folder}`")
        self.settings = json.loads((self.folder / "config.json").read_text())
        self.denoiser_config = DenoiserConfig(**self.settings["denoiser"])
        self.sampler = SamplerSettings(**self.settings["sampler"])
        stats_path = self.folder / "visual_stats.safetensors"
        if not stats_path.is_file():
            raise CheckpointError(f"visual_stats.safetensors is missing from {self.folder}")
        self.stats = load_file(str(stats_path))  # n{N}.mean / n{N}.std: (N, vit_dim) each
        self._cache: dict = {}

    # --- the visual tokenizer -----------------------------------------------------------------------------

    def pixels(self, images) -> torch.Tensor:
        """PIL images (any mode and size) -> (B, 3, 64, 64) in [-1, 1], as micro-BAGEL's ViT sees them."""
        if isinstance(images, Image.Image):
            images = [images]
        if not images or not all(isinstance(im, Image.Image) for im in images):
            raise TypeError("images must be a PIL image or a non-empty list of PIL images")
        return torch.stack([self.pipe.vit_transform(pil_img2rgb(im)) for im in images])

    def standardize(self, pooled: torch.Tensor, n: int) -> torch.Tensor:
        """Pooled ViT embeddings (B, n, D) in units of their spread over the training scenes."""
        return standardize(pooled, self.stats, n)

    @torch.no_grad()
    def embeddings(self, images, n: int) -> torch.Tensor:
        """Images -> N standardized embeddings each (B, n, vit_dim): frozen ViT, shift-and-stitch, pooling."""
        return self.standardize(pool(vit_grid(self.pipe.model, self.pixels(images)), check_n(n)), n)

    @torch.no_grad()
    def negative(self, n: int) -> torch.Tensor:
        """The guidance negative: embeddings of the all-zero (gray) image, as SEED-X. (1, n, vit_dim)."""
        if "gray_grid" not in self._cache:  # computed once, pooled per N
            self._cache["gray_grid"] = vit_grid(self.pipe.model, gray_image())  # (1, 8, 8, vit_dim)
        return self.standardize(pool(self._cache["gray_grid"], check_n(n)), n)

    # --- the trained parts ----------------------------------------------------------------------------------

    def base(self) -> tuple[torch.nn.Module, CaptionConditioner]:
        """The caption-conditioned denoiser that the de-tokenizers start from (the toy SDXL)."""
        if "base" not in self._cache:
            denoiser = Denoiser(self.denoiser_config)
            conditioner = CaptionConditioner(self.pipe.model.config.llm.hidden_size, self.denoiser_config.context_dim)
            load_into(base_holder(denoiser, conditioner), self.folder / "base.safetensors")
            self._cache["base"] = (denoiser.eval(), conditioner.eval())
        return self._cache["base"]

    @property
    def vit_dim(self) -> int:
        return self.pipe.model.config.vit.hidden_size

    def detokenizer(self, n: int, mode: str = "kv") -> DeTokenizer:
        """The de-tokenizer for N embeddings: the base denoiser plus what adapting it trained."""
        check_n(n)
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is unknown; use one of {MODES}")
        key = ("detokenizer", n, mode)
        if key not in self._cache:
            path = self.folder / detokenizer_file(n, mode)
            if mode != "kv" and not path.is_file():
                raise ValueError(f"no {mode!r} de-tokenizer for N = {n}: the ablation trains that variant for "
                                 f"N = {self.settings['compare_n']} only")
            dt = DeTokenizer(self.denoiser_config, self.vit_dim, **self.settings["resampler"])
            dt.denoiser.load_state_dict(self.base()[0].state_dict())
            load_into(dt, path, {k for k, _ in dt.named_parameters() if dt.trains(k, mode)})
            self._cache[key] = dt.eval().requires_grad_(False)
        return self._cache[key]

    def regressor(self, n: int, head: str = "cross") -> QueryRegressor:
        """The LLM (micro-BAGEL's, with LoRA) with N query tokens and an output head ("cross" or "deep")."""
        check_n(n)
        if head not in HEADS:
            raise ValueError(f"head {head!r} is unknown; use one of {tuple(HEADS)}")
        key = ("regressor", n, head)
        if key not in self._cache:
            path = self.folder / regressor_file(n, head)
            if head != "cross" and not path.is_file():
                raise ValueError(f"no {head!r} head for N = {n}: the ablation trains it for "
                                 f"N = {self.settings['compare_n']} only")
            reg = QueryRegressor(self.pipe.model, self.pipe.tokenizer, self.pipe.special, n, out_dim=self.vit_dim,
                                 head_depth=HEADS[head], lora_rank=self.settings["lora_rank"])
            load_into(reg, path, set(reg.trainable_state_dict()))
            self._cache[key] = reg.eval().requires_grad_(False)
        return self._cache[key]

    # --- drawing --------------------------------------------------------------------------------------------

    def _settings(self, overrides: dict) -> SamplerSettings:
        return SamplerSettings(**{**asdict(self.sampler), **overrides})

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> list[Image.Image]:
        """Latent tokens (B, 16, 64) -> PIL images through micro-BAGEL's autoencoder."""
        pixels = self.pipe.ae.decode(to_latents(tokens, self.denoiser_config)).clamp(-1, 1)
        return [tensor_to_pil(p) for p in pixels]

    def _noise(self, b: int, seed: int) -> torch.Tensor:
        """The starting noise of ``b`` images: (B, 16, 64) latent tokens from ``seed``."""
        cfg = self.denoiser_config
        return torch.randn(b, cfg.tokens_per_side**2, cfg.token_dim, generator=torch.Generator().manual_seed(seed))

    @torch.no_grad()
    def draw(self, embeddings: torch.Tensor, n: int, mode: str = "kv", seed: int = 0,
             **sampler) -> list[Image.Image]:
        """Standardized embeddings (B, n, vit_dim) -> images, through the de-tokenizer for N = n."""
        if embeddings.ndim != 3 or embeddings.shape[1:] != (n, self.vit_dim):
            raise ValueError(f"embeddings must be (batch, {n}, {self.vit_dim}), got {tuple(embeddings.shape)}")
        dt, noise = self.detokenizer(n, mode), self._noise(embeddings.shape[0], seed)
        tokens = sample(dt, embeddings, self.negative(n), noise.shape, settings=self._settings(sampler),
                        init_noise=noise)
        return self.decode(tokens)

    def reconstruct(self, images, n: int, mode: str = "kv", seed: int = 0, **sampler) -> list[Image.Image]:
        """Image -> N ViT embeddings -> image (the de-tokenizer alone)."""
        return self.draw(self.embeddings(images, n), n, mode, seed, **sampler)

    @torch.no_grad()
    def regress(self, prompts: list[str], n: int, head: str = "cross") -> torch.Tensor:
        """Captions -> the LLM's N regressed (standardized) embeddings (B, n, vit_dim)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        return self.regressor(n, head)(list(prompts))[0]

    def generate(self, prompts, n: int | None = None, head: str = "cross", seed: int = 0,
                 **sampler) -> list[Image.Image]:
        """Caption -> LLM + N query tokens -> output head -> N embeddings -> de-tokenizer -> image."""
        n = self.settings["compare_n"] if n is None else n
        return self.draw(self.regress(prompts, n, head), n, "kv", seed, **sampler)

    @torch.no_grad()
    def draw_from_captions(self, prompts, seed: int = 0, **sampler) -> list[Image.Image]:
        """The base denoiser on its own, drawing from captions (what SDXL is before SEED-X adapts it)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise ValueError("prompts must be non-empty strings")
        denoiser, conditioner = self.base()
        p = self.pipe
        states, valid = caption_states(p.model, p.tokenizer, p.special, prompts + [""],
                                       self.settings["caption_layers"])

        def velocity(x_t, t, s, v):
            return denoiser(x_t, t, conditioner(s), v)

        b, noise = len(prompts), self._noise(len(prompts), seed)
        tokens = sample(velocity, (states[:b], valid[:b]), (states[b:], valid[b:]), noise.shape,
                        settings=self._settings(sampler), init_noise=noise)
        return self.decode(tokens)


def load(folder: str | Path = CHECKPOINT, pipe=None) -> SeedX:
    """The toy SEED-X of ``folder`` (default: the shipped one) on the towers of micro-BAGEL v1 (``BASE``)."""
    if pipe is None:
        from .. import micro

        pipe = micro.load(BASE)
    return SeedX(pipe, folder)


__all__ = ["BASE", "CHECKPOINT", "HEADS", "MODES", "N_CHOICES", "SeedX", "load", "load_into", "save_tensors"]
