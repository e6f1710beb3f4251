"""The one-line API: ``pipe.generate(prompt)``, ``pipe.edit(image, instruction)``, ``pipe.answer(image, q)``.

Each is a thin layer over ``Pipeline.interleave``, which follows the official ``interleave_inference``:
it reads a list of strings and images into three contexts at once and then writes text or draws an image.

============================  ===========================  ===================  ======================
mode                          full context (v_cond)         without text         without images
============================  ===========================  ===================  ======================
text-to-image                 prompt                        (empty)              prompt
text-to-image + think         system, prompt, plan          system               system, prompt
editing                       image(VAE, ViT), instruction  image(VAE, ViT)      instruction
understanding                 image(ViT), question -> text
============================  ===========================  ===================  ======================

Every result records its seed and settings and the one-line call that reproduces it.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from PIL import Image

from .checkpoint import load_bagel, read_config
from .devices import check_fits, estimate_memory, free_gpu_memory, load_on_gpus, load_quantized
from .inference import EDIT_SETTINGS, T2I_SETTINGS, Context, Engine, ImageSettings
from .tokenizer import GEN_THINK_SYSTEM_PROMPT, VLM_THINK_SYSTEM_PROMPT
from .transforms import pil_img2rgb


@dataclass
class InterleaveResult:
    outputs: list  # [answer] or [plan (think mode), image], as the official interleave_inference
    text_ids: list[int] | None = None  # generated ids, from the fed <|im_start|> on
    latents: torch.Tensor | None = None  # (N, 64) final latent tokens of the image
    image_shape: tuple[int, int] | None = None


@dataclass
class Generated:
    """An image (and the think-mode plan, if any) with everything needed to make it again."""

    image: Image.Image
    text: str | None
    seed: int | None
    settings: dict = field(default_factory=dict)
    call: str = ""  # Python that reproduces it, given `pipe` (and `image` for edits)
    latents: torch.Tensor | None = None  # (N, 64) final latent tokens
    text_ids: list[int] | None = None

    def _repr_png_(self):  # shows the image in a notebook
        return self.image._repr_png_()


def _kwargs_text(settings: ImageSettings, defaults: ImageSettings) -> str:
    changed = {k: v for k, v in asdict(settings).items() if asdict(defaults)[k] != v}
    return "".join(f", {k}={v!r}" for k, v in changed.items())


class Pipeline(Engine):
    @classmethod
    def from_folder(cls, folder: str | Path, device: str | torch.device | None = None,
                    dtype: torch.dtype | None = None, quantize: str | None = None, **transforms) -> Pipeline:
        """Load a checkpoint folder (official layout).

        ``device``: "cpu", "cuda" / "cuda:1" (one GPU), or "auto" (split over every visible GPU with
        accelerate). Default: "cuda" when available, else "cpu". ``dtype`` defaults to bf16 on GPUs, float32
        on the CPU. On GPUs the memory needed is checked before any weight is read. ``quantize``: "nf4" or
        "int8" loads the linear layers through bitsandbytes (optional; GPU only).
        """
        if quantize is not None:
            b = load_quantized(folder, quantize)
            return cls(b.model, b.ae, b.tokenizer, b.special, **transforms)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        on_gpu = str(device) == "auto" or torch.device(device).type == "cuda"
        dtype = dtype or (torch.bfloat16 if on_gpu else torch.float32)
        if str(device) == "auto":
            b = load_on_gpus(folder, dtype)
        else:
            if on_gpu:
                index = torch.device(device).index or 0
                check_fits(estimate_memory(read_config(folder), dtype), {index: free_gpu_memory()[index]})
            b = load_bagel(folder, device=device, dtype=dtype)
        return cls(b.model, b.ae, b.tokenizer, b.special, **transforms)

    # ------------------------------------------------------------------------------------------------------

    def default_image_shape(self) -> tuple[int, int]:
        cfg = self.model.config
        side = min(1024, cfg.max_latent_size * cfg.latent_downsample)
        return side, side

    def interleave(self, items: list, **kwargs) -> list:
        """The official ``interleave_inference``: the list of outputs of ``run``."""
        return self.run(items, **kwargs).outputs

    @torch.no_grad()
    def run(self, items: list, *, think: bool = False, understanding_output: bool = False,
            max_think_tokens: int = 1000, do_sample: bool = False, temperature: float = 0.3,
            settings: ImageSettings = T2I_SETTINGS, image_shape: tuple[int, int] | None = None,
            generator: torch.Generator | None = None, init_noise: torch.Tensor | None = None,
            callback=None, batch_cfg: bool = True, progress: bool = True) -> InterleaveResult:
        """Read ``items`` (strings and PIL images, in order), then write text (``understanding_output``) or
        draw an image. Outputs: [answer] or [plan (think mode), image], with the raw ids and latents."""
        if not items:
            raise ValueError("items is empty: give at least one prompt string or image")
        for item in items:
            if isinstance(item, str) and not item.strip():
                raise ValueError("a prompt is empty: write what to draw, edit or answer")
            if not isinstance(item, (str, Image.Image)):
                raise TypeError(f"items must be strings or PIL images, got {type(item).__name__}")
        gen = cfg_text = cfg_img = Context()
        if think:
            system = VLM_THINK_SYSTEM_PROMPT if understanding_output else GEN_THINK_SYSTEM_PROMPT
            gen, cfg_img = self.add_text(gen, system), self.add_text(cfg_img, system)
        input_shape = None  # (height, width) of the last input image: the size of an edit
        for item in items:
            if isinstance(item, str):
                cfg_text = gen  # the context before this text: the text-unconditional branch
                gen, cfg_img = self.add_text(gen, item), self.add_text(cfg_img, item)
            else:
                image = self.vae_transform.resize(pil_img2rgb(item))  # every input image: VAE resize first
                gen = self.add_image(gen, image, vae=not understanding_output, vit=True, generator=generator)
                input_shape = (image.height, image.width)
                cfg_text = gen  # images are never added to cfg_img
        text_kw = dict(max_length=max_think_tokens, do_sample=do_sample, temperature=temperature,
                       generator=generator, progress=progress)
        if understanding_output:
            ids = self.generate_text(gen, **text_kw)
            return InterleaveResult([self.decode_text(ids)], text_ids=ids)
        outputs, ids = [], None
        if think:
            ids = self.generate_text(gen, **text_kw)
            plan = self.decode_text(ids)
            gen = self.add_text(gen, plan)  # the plan conditions only the full branch
            outputs.append(plan)
        shape = tuple(image_shape or input_shape or self.default_image_shape())
        tokens = self.generate_image(shape, gen, cfg_text, cfg_img, settings, init_noise, generator, callback,
                                     batch_cfg, progress)
        outputs.append(self.decode_image(tokens, shape))
        return InterleaveResult(outputs, ids, tokens, shape)

    # ------------------------------------------------------------------------------------------------------

    @staticmethod
    def _generator(seed: int | None) -> tuple[int, torch.Generator]:
        seed = random.randrange(2**31) if seed is None else int(seed)
        return seed, torch.Generator().manual_seed(seed)

    def generate(self, prompt: str, *, think: bool = False, image_shape: tuple[int, int] | None = None,
                 seed: int | None = None, init_noise: torch.Tensor | None = None, callback=None,
                 max_think_tokens: int = 1000, batch_cfg: bool = True, progress: bool = True,
                 **settings) -> Generated:
        """Text to image. ``settings`` override the official text-to-image defaults (``T2I_SETTINGS``):
        cfg_text_scale 4, cfg_img_scale 1, cfg_interval (0.4, 1), timestep_shift 3, num_timesteps 50, global."""
        chosen = replace(T2I_SETTINGS, **settings)
        shape = tuple(image_shape or self.default_image_shape())
        seed, gen = self._generator(seed)
        res = self.run([prompt], think=think, settings=chosen, image_shape=shape, generator=gen,
                       init_noise=init_noise, callback=callback, max_think_tokens=max_think_tokens,
                       batch_cfg=batch_cfg, progress=progress)
        call = (f"pipe.generate({prompt!r}, seed={seed}, image_shape={shape}"
                + (", think=True" if think else "") + _kwargs_text(chosen, T2I_SETTINGS) + ")")
        return Generated(res.outputs[-1], res.outputs[0] if think else None, seed, asdict(chosen), call,
                         res.latents, res.text_ids)

    def edit(self, image: Image.Image, instruction: str, *, think: bool = False, seed: int | None = None,
             init_noise: torch.Tensor | None = None, callback=None, max_think_tokens: int = 1000,
             batch_cfg: bool = True, progress: bool = True, **settings) -> Generated:
        """Edit ``image`` following ``instruction``. Defaults (``EDIT_SETTINGS``): cfg_text_scale 4,
        cfg_img_scale 2, cfg_interval (0, 1), text_channel renorm. Output size = the input's VAE size."""
        chosen = replace(EDIT_SETTINGS, **settings)
        seed, gen = self._generator(seed)
        res = self.run([image, instruction], think=think, settings=chosen, generator=gen,
                       init_noise=init_noise, callback=callback, max_think_tokens=max_think_tokens,
                       batch_cfg=batch_cfg, progress=progress)
        call = (f"pipe.edit(image, {instruction!r}, seed={seed}" + (", think=True" if think else "")
                + _kwargs_text(chosen, EDIT_SETTINGS) + ")")
        return Generated(res.outputs[-1], res.outputs[0] if think else None, seed, asdict(chosen), call,
                         res.latents, res.text_ids)

    def answer(self, image: Image.Image | None, question: str, *, think: bool = False, max_tokens: int = 1000,
               do_sample: bool = False, temperature: float = 0.3, seed: int | None = None,
               progress: bool = False) -> str:
        """Answer a question about an image (or, with ``image=None``, about nothing but the text). Greedy by
        default, as the official notebook."""
        _, gen = self._generator(seed)
        items = [question] if image is None else [image, question]
        return self.interleave(items, think=think, understanding_output=True, max_think_tokens=max_tokens,
                               do_sample=do_sample, temperature=temperature, generator=gen, progress=progress)[0]


def load(folder: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
         quantize: str | None = None, **transforms) -> Pipeline:
    """``pipe = bagel_lite.load(folder)``: the model of a checkpoint folder, ready for generate/edit/answer."""
    return Pipeline.from_folder(folder, device, dtype, quantize, **transforms)
