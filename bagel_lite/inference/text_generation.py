"""Writing text after a context: feed ``<|im_start|>``, take the argmax (or a sample), feed it back, repeat
until ``<|im_end|>``. Each written token goes into a copy of the context; the caller's context is unchanged."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from tqdm.auto import tqdm

from ..loading.tokenizer import cut_generated
from .contexts import Context, ContextFull, Reader
from .progress import GenerationStopped, TokenInfo
from .settings import check_text_sampling


@dataclass(frozen=True)
class Written:
    """What a model wrote: its ids (from ``<|im_start|>``), whether it ended them with ``<|im_end|>``, the text."""

    ids: list[int]
    finished: bool
    text: str


class Answer(str):
    """An answer's text (a ``str``) that knows whether the model finished it. ``finished`` is False when
    ``max_tokens`` ran out before ``<|im_end|>``: the text is then cut short, and its repr says so."""

    finished: bool
    max_tokens: int | None
    call: str  # the Python that asks again (``pipe.answer(...)``), when a pipeline made it

    def __new__(cls, text: str, finished: bool = True, max_tokens: int | None = None, call: str = ""):
        answer = super().__new__(cls, text)
        answer.finished, answer.max_tokens, answer.call = finished, max_tokens, call
        return answer

    def __repr__(self) -> str:
        if self.finished:
            return super().__repr__()
        return (f"{super().__repr__()} (cut: max_tokens={self.max_tokens} ran out before the model ended its answer;"
                " the count includes the <|im_start|> it starts with)")


def next_token(logits: torch.Tensor, do_sample: bool, temperature: float, generator) -> int:
    """The argmax of the (vocab,) logits, or a sample at ``temperature`` drawn with ``generator``."""
    if not do_sample:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


class TextWriter:
    """Writing text with a ``Reader``'s model: the tokens it chooses after a context, one at a time."""

    def __init__(self, reader: Reader):
        self.reader = reader

    def write(self, ctx: Context, *, max_tokens: int = 1000, do_sample: bool = False, temperature: float = 1.0,
              generator: torch.Generator | None = None, progress: bool = False,
              callback: Callable[[TokenInfo], object] | None = None) -> Written:
        """Token ids from ``<|im_start|>`` (included) up to, not including, ``<|im_end|>``; at most
        ``max_tokens`` ids in all, and whether ``<|im_end|>`` came before they ran out. ``ctx`` itself is left
        unchanged. A ``callback`` that returns False stops the writing (``GenerationStopped``); so does reaching
        the model's last position before ``<|im_end|>`` (``ContextFull``: no answer is silently cut)."""
        r = self.reader
        limit = r.model.config.llm.max_position_embeddings
        check_text_sampling("max_tokens", max_tokens, limit, do_sample, temperature)
        token, ids = r.special.bos, []
        for step in tqdm(range(max_tokens), desc="text tokens", disable=not progress, leave=False):
            if ctx.rope >= limit:
                raise ContextFull(f"the answer reached the model's last position ({limit}) after {step} tokens "
                                  "without finishing: shorten the prompt or the conversation (new chat)")
            ids.append(token)
            rows = r.model.embed_text(torch.tensor([token], device=r.device))
            hidden, ctx = r.forward_rows(ctx, rows, torch.tensor([ctx.rope], device=r.device), None, True)
            ctx = replace(ctx, rope=ctx.rope + 1)
            token = next_token(r.model.logits(hidden[-1]).float(), do_sample, temperature, generator)
            if callback is not None and callback(TokenInfo(step, token)) is False:
                raise GenerationStopped(step, "token")
            if token == r.special.eos:
                return Written(ids, True, self.decode(ids))
        return Written(ids, False, self.decode(ids))

    def decode(self, ids: list[int]) -> str:
        """The written ids as text, without the ``<|im_start|>`` they start with."""
        return cut_generated(self.reader.tokenizer.decode(ids))
