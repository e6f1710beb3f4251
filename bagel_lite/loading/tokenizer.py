"""Text in and out: the Qwen2 byte-level BPE tokenizer and BAGEL's four special tokens.

BAGEL uses no chat template. A text segment is exactly ``<|im_start|> + ids + <|im_end|>`` — no role names,
no newlines. An image block is ``<|vision_start|> + image tokens + <|vision_end|>``. BAGEL's "bos" is
``<|im_start|>``; ids are always looked up through the tokenizer, never hard-coded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

BOS, EOS, VISION_START, VISION_END = "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"

# Think-mode system prompts, verbatim model inputs (note the single space before each "\n").
VLM_THINK_SYSTEM_PROMPT = (
    "You should first think about the reasoning process in the mind and then provide the user with the answer. \n"
    "The reasoning process is enclosed within <think> </think> tags, i.e. <think> reasoning process here </think> "
    "answer here"
)
GEN_THINK_SYSTEM_PROMPT = (
    "You should first think about the planning process in the mind and then generate the image. \n"
    "The planning process is enclosed within <think> </think> tags, i.e. <think> planning process here </think> "
    "image here"
)


@dataclass(frozen=True)
class SpecialTokens:
    bos: int  # <|im_start|>: opens every text segment, and is fed to start text generation
    eos: int  # <|im_end|>: closes every text segment; generation stops when it is predicted
    start_of_image: int  # <|vision_start|>
    end_of_image: int  # <|vision_end|>


def add_special_tokens(tokenizer) -> SpecialTokens:
    """Add whichever of the four marker strings the tokenizer lacks (the released one has all four)."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in (BOS, EOS, VISION_START, VISION_END) if t not in vocab]
    if missing:
        tokenizer.add_tokens(missing)
    ids = tokenizer.convert_tokens_to_ids([BOS, EOS, VISION_START, VISION_END])
    return SpecialTokens(*ids)


def load_tokenizer(folder: str | Path):
    """The Qwen2 tokenizer of a checkpoint folder (``vocab.json`` + ``merges.txt``), with BAGEL's markers."""
    from transformers import Qwen2Tokenizer

    tokenizer = Qwen2Tokenizer.from_pretrained(str(folder))
    return tokenizer, add_special_tokens(tokenizer)


def wrap_text(tokenizer, special: SpecialTokens, text: str) -> list[int]:
    """``<|im_start|> + encode(text) + <|im_end|>``: BAGEL's one and only text-segment format."""
    return [special.bos, *tokenizer.encode(text), special.eos]


def cut_generated(decoded: str) -> str:
    """Keep the text between the leading ``<|im_start|>`` and the first ``<|im_end|>``, as the official code."""
    return decoded.split(EOS)[0].split(BOS)[1]


def pad_batch(seqs: list[list[int]], pad_id: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Id sequences of different lengths as one (B, T) batch padded with ``pad_id`` on the right (or the
    ``left``), and its validity (B, T): True at real tokens."""
    longest = max(len(q) for q in seqs)
    ids = torch.full((len(seqs), longest), pad_id, dtype=torch.long)
    valid = torch.zeros(len(seqs), longest, dtype=torch.bool)
    for i, q in enumerate(seqs):
        where = slice(longest - len(q), None) if left else slice(None, len(q))
        ids[i, where] = torch.tensor(q)
        valid[i, where] = True
    return ids, valid
