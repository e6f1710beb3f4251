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

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ..loading.checkpoint import load_bagel, read_config
from ..loading.devices import (
    check_fits,
    check_quantize_request,
    estimate_memory,
    free_gpu_memory,
    load_on_gpus,
    load_quantized,
)
from ..loading.tokenizer import GEN_THINK_SYSTEM_PROMPT, VLM_THINK_SYSTEM_PROMPT, SpecialTokens
from ..loading.transforms import ImageTransform, read_image
from ..model.autoencoder import AutoEncoder
from ..model.bagel import Bagel
from ..model.checks import check_bool
from .calls import Variable, call_line
from .conversation import Conversation
from .engine import Engine
from .settings import (
    EDIT_SETTINGS,
    T2I_SETTINGS,
    ImageSettings,
    check_init_noise,
    check_text,
    check_text_sampling,
    image_settings,
    make_generator,
)
from .text_generation import Answer


@dataclass
class InterleaveResult:
    outputs: list  # [answer] or [plan (think mode), image], as the official interleave_inference
    text_ids: list[int] | None = None  # generated ids, from the fed <|im_start|> on
    latents: torch.Tensor | None = None  # (N, 64) final latent tokens of the image
    image_shape: tuple[int, int] | None = None
    finished: bool | None = None  # written text: whether the model ended it (False: the token budget ran out)


@dataclass
class Generated:
    """An image (and the think-mode plan, if any) with everything needed to make it again."""

    image: Image.Image
    text: str | None
    seed: int | None
    settings: dict = field(default_factory=dict)
    call: str = ""  # Python that reproduces it, given `pipe` (`image` for edits, `init_noise` if one was passed)
    latents: torch.Tensor | None = None  # (N, 64) final latent tokens
    text_ids: list[int] | None = None

    def _repr_png_(self):  # shows the image in a notebook
        return self.image._repr_png_()


class Pipeline:
    """The one-line API over an ``Engine``: ``generate``, ``edit``, ``answer``, ``chat`` and the general ``run``.

    It holds the engine (``pipe.engine``: ``read`` / ``write`` / ``draw``) and, for a closer look, the engine's
    model, autoencoder, tokenizer, markers and image transforms under their own names."""

    def __init__(self, model: Bagel, ae: AutoEncoder, tokenizer, special: SpecialTokens, *,
                 vae_transform: ImageTransform | None = None, vit_transform: ImageTransform | None = None):
        self.engine = Engine(model, ae, tokenizer, special, vae_transform=vae_transform,
                             vit_transform=vit_transform)
        self.model, self.ae, self.tokenizer, self.special = model, ae, tokenizer, special
        self.vae_transform, self.vit_transform = self.engine.vae_transform, self.engine.vit_transform

    @classmethod
    def from_folder(cls, folder: str | Path, device: str | torch.device | None = None,
                    dtype: torch.dtype | None = None, quantize: str | None = None, **transforms) -> Pipeline:
        """Load a checkpoint folder (official layout).

        ``device``: "cpu", "cuda" / "cuda:1" (one GPU), or "auto" (split over every visible GPU with
        accelerate). Default: "cuda" when available, else "cpu". ``dtype`` defaults to bf16 on GPUs, float32
        on the CPU. On GPUs the memory needed is checked before any weight is read. ``quantize``: "nf4" or
        "int8" loads the linear layers through bitsandbytes (optional; GPU only): it places the layers and chooses
        the dtypes itself, so a ``device`` other than "auto"/"cuda" or any ``dtype`` is refused with it.
        """
        if quantize is not None:
            check_quantize_request(quantize, device, dtype)
            b = load_quantized(folder, quantize)
            return cls(b.model, b.ae, b.tokenizer, b.special, **transforms)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        on_gpu = str(device) == "auto" or torch.device(device).type == "cuda"
        if on_gpu and not torch.cuda.is_available():
            raise RuntimeError(f"device={str(device)!r} asks for a GPU, but PyTorch sees no CUDA device here: "
                               "use device='cpu' (or install a CUDA build of PyTorch on a GPU machine)")
        dtype = dtype or (torch.bfloat16 if on_gpu else torch.float32)
        if str(device) == "auto":
            b = load_on_gpus(folder, dtype)
        else:
            if on_gpu:
                index = torch.device(device).index or 0
                check_fits(estimate_memory(read_config(folder), dtype), {index: free_gpu_memory()[index]})
            b = load_bagel(folder, device=device, dtype=dtype)
        if on_gpu:  # the autoencoder (float32, 0.3 GB) beside embed_tokens: a 1024x1024 decode takes 0.1 s
            b.ae.to(b.model.language_model.model.embed_tokens.weight.device)  # there, 15 s on 16 CPU cores
        return cls(b.model, b.ae, b.tokenizer, b.special, **transforms)

    # ------------------------------------------------------------------------------------------------------

    def chat(self) -> Conversation:
        """A conversation kept across turns: ``chat.send("a red circle", reply_image=True, seed=1)``."""
        return Conversation(self.engine)

    def interleave(self, items: list, **kwargs) -> list:
        """The official ``interleave_inference``: the list of outputs of ``run``."""
        return self.run(items, **kwargs).outputs

    @torch.no_grad()
    def run(self, items: list, *, think: bool = False, understanding_output: bool = False,
            max_think_tokens: int = 1000, do_sample: bool = False, temperature: float = 0.3,
            settings: ImageSettings = T2I_SETTINGS, image_shape: tuple[int, int] | None = None,
            generator: torch.Generator | None = None, init_noise: torch.Tensor | None = None,
            callback=None, text_callback=None, batch_cfg: bool = True, progress: bool = True) -> InterleaveResult:
        """Read ``items`` in order (strings are text; PIL images and ``pathlib.Path`` files are images), then
        write text (``understanding_output``) or draw an image. Outputs: [answer] or [plan (think mode), image],
        with the raw ids and latents. Everything is checked before any compute. ``callback`` gets each Euler
        step (``StepInfo``), ``text_callback`` each written token (``TokenInfo``); either stops the run by
        returning False. Without a ``generator`` one is made from a fresh seed (never the global RNG)."""
        items, shape = self._check_run(items, think=think, understanding_output=understanding_output,
                                       max_think_tokens=max_think_tokens, do_sample=do_sample,
                                       temperature=temperature, settings=settings, image_shape=image_shape,
                                       init_noise=init_noise, batch_cfg=batch_cfg)
        generator = generator if generator is not None else make_generator(None)[1]
        system = (VLM_THINK_SYSTEM_PROMPT if understanding_output else GEN_THINK_SYSTEM_PROMPT) if think else None
        conv = Conversation(self.engine, system)
        with conv.turn():
            for item in items:
                if isinstance(item, str):
                    conv.say(item)
                else:
                    conv.show(item, generator, vae=not understanding_output)
            write = dict(max_tokens=max_think_tokens, do_sample=do_sample, temperature=temperature,
                         generator=generator, callback=text_callback, progress=progress)
            if understanding_output:
                ids, answer = conv.write(**write)
                return InterleaveResult([answer], text_ids=ids, finished=answer.finished)
            outputs, ids = [], None
            if think:
                ids, plan = conv.write(**write)
                conv.remember_plan(plan)  # the plan conditions only the full branch
                outputs.append(plan)
            drawn = self.engine.draw(conv.guidance(), image_shape=shape, settings=settings, generator=generator,
                                     init_noise=init_noise, callback=callback, batch_cfg=batch_cfg,
                                     progress=progress)
            return InterleaveResult(outputs + [drawn.image], ids, drawn.latents, drawn.image_shape)

    def _check_run(self, items, *, think, understanding_output, max_think_tokens, do_sample, temperature,
                   settings, image_shape, init_noise, batch_cfg) -> tuple[list, tuple[int, int] | None]:
        """Every input of ``run``, checked before any compute: the items (images read in full) and the output
        size (``Engine.image_shape``: as asked, else the last input image's, else the default; None for text)."""
        if not isinstance(items, (list, tuple)) or not items:
            raise ValueError("items must be a non-empty list of prompt strings and images")
        items = [check_text("prompt", x) if isinstance(x, str) else read_image(x, "items image") for x in items]
        for name, flag in (("think", think), ("understanding_output", understanding_output),
                           ("batch_cfg", batch_cfg)):
            check_bool(name, flag)
        if think or understanding_output:
            limit = self.model.config.llm.max_position_embeddings
            check_text_sampling("max_think_tokens", max_think_tokens, limit, do_sample, temperature)
        if understanding_output:
            return items, None
        if not isinstance(settings, ImageSettings):
            raise TypeError(f"settings must be an ImageSettings, got {type(settings).__name__}")
        images = [x for x in items if isinstance(x, Image.Image)]
        shape = self.engine.image_shape(image_shape, source=images[-1] if images else None)
        if init_noise is not None:
            cfg = self.model.config
            n = (shape[0] // cfg.latent_downsample) * (shape[1] // cfg.latent_downsample)
            check_init_noise(init_noise, n, cfg.patch_latent_dim, shape)
        return items, shape

    # ------------------------------------------------------------------------------------------------------

    def generate(self, prompt: str, *, think: bool = False, image_shape: tuple[int, int] | None = None,
                 seed: int | None = None, init_noise: torch.Tensor | None = None, callback=None,
                 text_callback=None, max_think_tokens: int = 1000, batch_cfg: bool = True, progress: bool = True,
                 **settings) -> Generated:
        """Text to image. ``settings`` override the official text-to-image defaults (``T2I_SETTINGS``):
        cfg_text_scale 4, cfg_img_scale 1, cfg_interval (0.4, 1), timestep_shift 3, num_timesteps 50, global."""
        chosen = image_settings(T2I_SETTINGS, settings)
        check_text("prompt", prompt)
        shape = self.engine.image_shape(image_shape)
        seed, generator = make_generator(seed)
        res = self.run([prompt], think=think, settings=chosen, image_shape=shape, generator=generator,
                       init_noise=init_noise, callback=callback, text_callback=text_callback,
                       max_think_tokens=max_think_tokens, batch_cfg=batch_cfg, progress=progress)
        call = call_line("pipe", "generate", prompt, seed=seed, image_shape=shape,
                     **_run_kwargs(think, max_think_tokens, init_noise, batch_cfg), **_changed(chosen, T2I_SETTINGS))
        return Generated(res.outputs[-1], res.outputs[0] if think else None, seed, asdict(chosen), call,
                         res.latents, res.text_ids)

    def edit(self, image: Image.Image, instruction: str, *, think: bool = False, seed: int | None = None,
             init_noise: torch.Tensor | None = None, callback=None, text_callback=None, max_think_tokens: int = 1000,
             batch_cfg: bool = True, progress: bool = True, **settings) -> Generated:
        """Edit ``image`` (a PIL image, or the path or bytes of an image file) following ``instruction``.
        Defaults (``EDIT_SETTINGS``): cfg_text_scale 4, cfg_img_scale 2, cfg_interval (0, 1), text_channel
        renorm. Output size = the input's VAE size."""
        chosen = image_settings(EDIT_SETTINGS, settings)
        instruction, image = check_text("instruction", instruction), read_image(image)
        seed, generator = make_generator(seed)
        res = self.run([image, instruction], think=think, settings=chosen, generator=generator,
                       init_noise=init_noise, callback=callback, text_callback=text_callback,
                       max_think_tokens=max_think_tokens, batch_cfg=batch_cfg, progress=progress)
        call = call_line("pipe", "edit", Variable("image"), instruction, seed=seed,
                     **_run_kwargs(think, max_think_tokens, init_noise, batch_cfg), **_changed(chosen, EDIT_SETTINGS))
        return Generated(res.outputs[-1], res.outputs[0] if think else None, seed, asdict(chosen), call,
                         res.latents, res.text_ids)

    def answer(self, image: Image.Image | None, question: str, *, think: bool = False, max_tokens: int = 1000,
               do_sample: bool = False, temperature: float = 0.3, seed: int | None = None, callback=None,
               progress: bool = False) -> Answer:
        """Answer a question about an image (a PIL image, a path or bytes; ``None``: about the text alone).
        Greedy by default, as the official notebook. ``callback`` gets each token (``TokenInfo``); returning
        False stops (``GenerationStopped``). The answer is a ``str`` whose ``finished`` is False (and whose repr
        says so) when ``max_tokens`` (counting the ``<|im_start|>`` it starts with) ran out before its end."""
        question = check_text("question", question)
        check_text_sampling("max_tokens", max_tokens, self.model.config.llm.max_position_embeddings, do_sample,
                            temperature)
        items = [question] if image is None else [read_image(image), question]
        seed, generator = make_generator(seed)
        out = self.run(items, think=think, understanding_output=True, max_think_tokens=max_tokens,
                       do_sample=do_sample, temperature=temperature, generator=generator, text_callback=callback,
                       progress=progress).outputs[0]
        options = {"think": True} if think else {}
        options.update({"do_sample": True, "temperature": temperature, "seed": seed} if do_sample else {})
        call = call_line("pipe", "answer", None if image is None else Variable("image"), question,
                         max_tokens=max_tokens, **options)
        return Answer(out, out.finished, max_tokens, call=call)


def _changed(settings: ImageSettings, defaults: ImageSettings) -> dict:
    return {k: v for k, v in asdict(settings).items() if asdict(defaults)[k] != v}


def _run_kwargs(think: bool, max_think_tokens: int, init_noise, batch_cfg: bool) -> dict:
    """The keywords besides the sampler settings that change the output, when they are not the defaults."""
    kwargs = {"think": True, "max_think_tokens": max_think_tokens} if think else {}
    if init_noise is not None:
        kwargs["init_noise"] = Variable("init_noise")
    if not batch_cfg:
        kwargs["batch_cfg"] = False
    return kwargs


def load(folder: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
         quantize: str | None = None, **transforms) -> Pipeline:
    """``pipe = bagel_lite.load(folder)``: the model of a checkpoint folder, ready for generate/edit/answer."""
    return Pipeline.from_folder(folder, device, dtype, quantize, **transforms)
