"""A conversation with BAGEL: what has been read, kept as the three contexts of guidance, and turns that
happen completely or not at all.

Classifier-free guidance looks at the same noisy image in three contexts (``Context``: the KV cache and the
next free position), which grow as the conversation does:

=========  ===================================  ==========================================================
context    holds                                 used for
=========  ===================================  ==========================================================
gen        everything read and written so far    the conditional velocity, and writing text
cfg_text   everything before the last text       the text-unconditional velocity
cfg_img    the texts only, no image              the image-unconditional velocity
=========  ===================================  ==========================================================

``Pipeline.generate`` / ``edit`` / ``answer`` / ``run`` make a fresh ``Conversation`` for each call; the
playground's chat keeps one across turns (``pipe.chat()``). Every random draw of a turn (the autoencoder's
posterior for each image read, text sampling, the initial noise) comes from that turn's generator.

**A turn is a transaction.** ``with conv.turn(): ...`` keeps the state before the turn and puts it back on
any exception, a Stop (``GenerationStopped``) or ``KeyboardInterrupt``. Contexts never change in place, so
keeping the old state is keeping a reference to it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from PIL import Image

from ..loading.transforms import pil_img2rgb
from ..model.checks import check_bool
from .calls import Variable, call_line
from .contexts import Context, ContextFull
from .engine import Engine
from .settings import (
    SETTING_NAMES,
    T2I_SETTINGS,
    check_text,
    check_text_sampling,
    image_settings,
    make_generator,
)
from .text_generation import Answer


@dataclass(frozen=True)
class Turn:
    role: str  # "user" or "model"
    content: str | Image.Image


@dataclass(frozen=True)
class State:
    gen: Context = Context()
    cfg_text: Context = Context()
    cfg_img: Context = Context()
    turns: tuple[Turn, ...] = ()


@dataclass
class Reply:
    """What the model said in a chat turn: text, or an image with its latents; and the turn's seed."""

    text: str | None
    image: Image.Image | None
    seed: int
    settings: dict
    call: str  # the line that sends this turn again, given `chat` in the state before it
    latents: torch.Tensor | None = None  # (N, 64) final latent tokens of the image


# send()'s own keywords, besides the sampler settings (named together when a keyword is unknown)
SEND_KEYWORDS = ("image", "reply_image", "seed", "image_shape", "max_tokens", "callback", "text_callback")


class Conversation:
    def __init__(self, engine: Engine, system: str | None = None):
        self.engine = engine
        self.state = State()
        if system is not None:  # a think-mode system prompt: in the full and the image-free context
            self.state = State(gen=engine.read(Context(), system), cfg_img=engine.read(Context(), system))

    @contextmanager
    def turn(self) -> Iterator[Conversation]:
        """Everything inside happens, or (on any exception, Stop or interrupt) nothing does."""
        before = self.state
        try:
            yield self
        except BaseException:
            self.state = before
            raise

    @property
    def turns(self) -> tuple[Turn, ...]:
        return self.state.turns

    def contains(self, image: Image.Image) -> bool:
        """Whether this very image object is already part of the conversation."""
        return any(turn.content is image for turn in self.state.turns)

    # --- reading --------------------------------------------------------------------------------------------

    def say(self, text: str, role: str = "user"):
        """Append a text: the text-unconditional branch keeps the context before it."""
        s, text = self.state, check_text("prompt", text)
        self.state = replace(s, gen=self.engine.read(s.gen, text), cfg_text=s.gen,
                             cfg_img=self.engine.read(s.cfg_img, text), turns=s.turns + (Turn(role, text),))

    def show(self, image: Image.Image, generator: torch.Generator, vae: bool = True, role: str = "user"):
        """Append an image (VAE latents if ``vae``, then ViT tokens), resized as every input image is.
        Images never enter the image-free context."""
        s = self.state
        resized = self.engine.vae_transform.resize(pil_img2rgb(image))
        gen = self.engine.read(s.gen, resized, vae=vae, vit=True, generator=generator)
        self.state = replace(s, gen=gen, cfg_text=gen, turns=s.turns + (Turn(role, image),))

    def remember_plan(self, plan: str):
        """A think-mode plan conditions only the full context, as in the official code."""
        self.state = replace(self.state, gen=self.engine.read(self.state.gen, plan),
                             turns=self.state.turns + (Turn("model", plan),))

    def remember_reply(self, text: str):
        """The model's answer joins the conversation (full and image-free contexts)."""
        s = self.state
        self.state = replace(s, gen=self.engine.read(s.gen, text), cfg_img=self.engine.read(s.cfg_img, text),
                             turns=s.turns + (Turn("model", text),))

    # --- writing --------------------------------------------------------------------------------------------

    def write(self, *, max_tokens: int, do_sample: bool = False, temperature: float = 1.0,
              generator: torch.Generator | None = None, callback=None, progress: bool = False
              ) -> tuple[list[int], Answer]:
        """Write text after the full context: the ids (from ``<|im_start|>``) and the decoded text, which says
        whether the model finished it (``Answer.finished``)."""
        written = self.engine.write(self.state.gen, max_tokens=max_tokens, do_sample=do_sample,
                                    temperature=temperature, generator=generator, progress=progress,
                                    callback=callback)
        return written.ids, Answer(written.text, written.finished, max_tokens)

    def guidance(self) -> dict[str, Context]:
        """The three contexts an image is drawn after: ``engine.draw(conv.guidance(), ...)``."""
        s = self.state
        return {"cond": s.gen, "text": s.cfg_text, "img": s.cfg_img}

    # --- a chat turn ----------------------------------------------------------------------------------------

    def send(self, text: str, *, image: Image.Image | None = None, reply_image: bool = False, seed: int = 0,
             image_shape: tuple[int, int] | None = None, max_tokens: int = 512, callback=None, text_callback=None,
             **settings) -> Reply:
        """One chat turn, as a transaction: read ``image`` (if given and not already in the conversation) and
        ``text``, then answer in text, or draw an image (``reply_image``) that joins the conversation.
        ``settings`` override the text-to-image sampler defaults."""
        unknown = [name for name in settings if name not in SETTING_NAMES]
        if unknown:
            close = difflib.get_close_matches(unknown[0], (*SEND_KEYWORDS, *SETTING_NAMES), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"send() got an unknown keyword {unknown[0]!r}{hint}; its own are "
                            f"{', '.join(SEND_KEYWORDS)}, and the sampler settings {', '.join(SETTING_NAMES)}")
        chosen = image_settings(T2I_SETTINGS, settings)
        check_bool("reply_image", reply_image)
        check_text("message", text)
        check_text_sampling("max_tokens", max_tokens, self.engine.model.config.llm.max_position_embeddings, False, 1)
        shape = self.engine.image_shape(image_shape)
        seed, generator = make_generator(seed)
        attach = image is not None and not self.contains(image)  # an image already read is not read twice
        try:
            return self._send(text, image=image if attach else None, reply_image=reply_image, seed=seed,
                              generator=generator, shape=shape, chosen=chosen, max_tokens=max_tokens,
                              callback=callback, text_callback=text_callback)
        except ContextFull as e:  # the turn left the conversation as it was
            raise ContextFull(f"this conversation is full ({e}); it is kept as it was before this message. Start a "
                              "new one (pipe.chat()) or send a shorter message") from None

    def _send(self, text, *, image, reply_image, seed, generator, shape, chosen, max_tokens, callback,
              text_callback) -> Reply:
        attach = image is not None
        with self.turn():
            if attach:
                self.show(image, generator)
            self.say(text)
            if reply_image:
                return self._draw_reply(text, attach=attach, shape=shape, chosen=chosen, seed=seed,
                                        generator=generator, callback=callback)
            _, answer = self.write(max_tokens=max_tokens, generator=generator, callback=text_callback)
            self.remember_reply(answer)
            call = _send_call(text, attach, seed, max_tokens=max_tokens)
            return Reply(answer, None, seed, {"max_tokens": max_tokens}, call)

    def _draw_reply(self, text, *, attach, shape, chosen, seed, generator, callback) -> Reply:
        drawn = self.engine.draw(self.guidance(), image_shape=shape, settings=chosen, generator=generator,
                                 callback=callback, progress=False)
        tokens, image = drawn.latents, drawn.image
        self.show(image, generator, role="model")  # the drawn image joins the conversation
        changed = {k: v for k, v in vars(chosen).items() if getattr(T2I_SETTINGS, k) != v}
        call = _send_call(text, attach, seed, reply_image=True, image_shape=shape, **changed)
        return Reply(None, image, seed, vars(chosen).copy(), call, tokens)


def _send_call(text: str, attach: bool, seed: int, **kwargs) -> str:
    """``chat.send(...)``: given `chat` in the state before the turn (and `image`, when one was attached)."""
    kwargs = {"image": Variable("image"), **kwargs} if attach else kwargs
    return call_line("chat", "send", text, seed=seed, **kwargs)
