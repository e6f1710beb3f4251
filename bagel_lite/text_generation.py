"""Writing text after a context: feed ``<|im_start|>``, take the argmax (or a sample), feed it back, repeat
until ``<|im_end|>``. Each written token goes into a copy of the context; the caller's context is unchanged."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from tqdm.auto import tqdm

from .contexts import Context, Reader
from .progress import GenerationStopped, TokenInfo
from .settings import check_text_sampling
from .tokenizer import cut_generated


def next_token(logits: torch.Tensor, do_sample: bool, temperature: float, generator) -> int:
    """The argmax of the (vocab,) logits, or a sample at ``temperature`` drawn with ``generator``."""
    if not do_sample:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


class TextWriter(Reader):
    """Reading, plus writing text."""

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
            hidden, ctx = self.forward_rows(ctx, rows, torch.tensor([ctx.rope], device=self.device), None, True)
            ctx = replace(ctx, rope=ctx.rope + 1)
            token = next_token(self.model.logits(hidden[-1]).float(), do_sample, temperature, generator)
            if callback is not None and callback(TokenInfo(step, token)) is False:
                raise GenerationStopped(step, "token")
            if token == self.special.eos:
                break
        return ids

    def decode_text(self, ids: list[int]) -> str:
        """The written ids as text, without the ``<|im_start|>`` they start with."""
        return cut_generated(self.tokenizer.decode(ids))
