"""SEED-X's LLM side at toy scale: a pre-trained LLM with LoRA, N learnable image-query tokens, an output head.

In SEED-X the LLM (LLaMA-2-13B, frozen, trained through LoRA) ends an image request with ``<img>`` and 64
image tokens ``<img_00000> .. <img_00063>`` whose embeddings are learned. Their last hidden states go
through an *output resampler* (one cross-attention layer, 64 queries) into ViT-embedding space, and a mean
squared error against the pooled ViT embeddings of the target image (weight 6.0, next to 1.0 for the
language loss) trains it. The de-tokenizer then draws from the regressed embeddings.

Here the pre-trained LLM is micro-BAGEL's own language model (its understanding expert, which knows this
world's words), frozen, with rank-8 LoRA on the seven projections of every layer and trainable norms, as in
SEED-X's LoRA config. A sequence is

    <|im_start|> caption <|im_end|> <|vision_start|> q_1 .. q_N

with causal attention (image tokens are ordinary next tokens), and the head maps the states of q_1 .. q_N
to N embeddings. One departure: the head reads the residual stream *before* the LLM's final norm (SEED-X
reads LLaMA's normed last hidden state). Micro-BAGEL's final norm was only ever trained to feed ``lm_head``
one-word answers and squeezes most directions; reading past it regressed worse (0.37 vs 0.31 relative error
at N = 16 after 600 steps, in a trial run).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..loading.tokenizer import SpecialTokens, pad_batch
from ..model.bagel import Bagel
from ..model.positions import rope_cos_sin
from .resampler import Resampler

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# trained besides LoRA, as SEED-X's modules_to_save: the final norm, then each layer's two norms (und expert)
TRAINABLE_NORMS = ("model.norm.weight", ".input_layernorm.weight", ".post_attention_layernorm.weight")


def residual_stream(model: Bagel, x: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor | None,
                    layers: int | None = None) -> torch.Tensor:
    """The understanding expert's residual stream after its first ``layers`` layers (all by default), *before*
    the final norm. x: (B, L, D) input rows; positions: (B, L); allowed: (B, 1, L, L) or None."""
    llm = model.config.llm
    cos, sin = rope_cos_sin(positions, llm.head_dim, llm.rope_theta, x.dtype)  # (B, L, head_dim)
    for layer in model.language_model.model.layers[:layers]:
        x, _ = layer(x, None, cos, sin, allowed)
    return x


class LoRALinear(nn.Module):
    """``base(x) + (alpha / rank) * B(A(x))`` with ``base`` frozen and B starting at zero."""

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 8.0):
        super().__init__()
        self.base = base
        self.lora_A = nn.Parameter(torch.randn(rank, base.in_features) / base.in_features**0.5)  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))  # (out, r)
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * (x @ self.lora_A.T) @ self.lora_B.T


class QueryRegressor(nn.Module):
    """Caption -> N embeddings of ``out_dim`` (SEED-X's LLM + output resampler).

    ``head_depth`` 1: the one-layer cross-attention head (SEED-X's output resampler);
    > 1: a multi-layer Perceiver resampler with feed-forward blocks.
    """

    def __init__(self, base: Bagel, tokenizer, special: SpecialTokens, n: int, *, out_dim: int, head_depth: int = 1,
                 lora_rank: int = 8):
        super().__init__()
        self.tokenizer, self.special, self.n = tokenizer, special, n
        self.llm = copy.deepcopy(base).requires_grad_(False)  # a private copy: LoRA goes into its layers
        self.llm.eval()
        for layer in self.llm.language_model.model.layers:
            for module in (layer.self_attn, layer.mlp):
                for name in LORA_TARGETS:
                    if hasattr(module, name):  # the understanding expert's projections (no _moe_gen suffix)
                        setattr(module, name, LoRALinear(getattr(module, name), lora_rank, lora_rank))
        for name, p in self.llm.language_model.named_parameters():
            if name in TRAINABLE_NORMS or name.endswith(TRAINABLE_NORMS[1:]):
                p.requires_grad_(True)
        d = base.config.llm.hidden_size
        self.queries = nn.Parameter(torch.randn(n, d) * d**-0.5)  # (N, D): the embeddings of <img_i>
        self.head = Resampler(d, out_dim, n, width=out_dim, depth=head_depth, heads=4, feedforward=head_depth > 1)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What training changes (LoRA, norms, queries, head): all that is saved; the LLM comes from micro."""
        return {k: p.detach() for k, p in self.named_parameters() if p.requires_grad}

    def _batch(self, captions: list[str]):
        """Left-padded ids (B, T), key validity (B, T), positions (B, T); T = longest caption + 3."""
        s = self.special
        ids, valid = pad_batch([[s.bos, *self.tokenizer.encode(c), s.eos, s.start_of_image] for c in captions],
                               s.eos, left=True)
        positions = (valid.cumsum(1) - 1).clamp(min=0)  # real tokens count 0, 1, ..; padding sits at 0
        return ids, valid, positions

    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the regressed embeddings (B, N, out_dim) and the language loss on the captions (a scalar:
        each token predicts the next, ``<|im_end|>`` predicts ``<|vision_start|>``, the decision to draw)."""
        if not captions or any(not isinstance(c, str) or not c.strip() for c in captions):
            raise ValueError("captions must be a non-empty list of non-empty strings")
        ids, valid, positions = self._batch(captions)
        b, t = ids.shape
        x = torch.cat([self.llm.embed_text(ids), self.queries.expand(b, -1, -1)], dim=1)  # (B, T + N, D)
        valid = torch.cat([valid, torch.ones(b, self.n, dtype=torch.bool)], dim=1)  # (B, T + N)
        positions = torch.cat([positions, positions[:, -1:] + 1 + torch.arange(self.n)], dim=1)
        length = t + self.n
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        allowed = (causal & valid[:, None, :]) | torch.eye(length, dtype=torch.bool)  # (B, L, L); pads see themselves
        stream = residual_stream(self.llm, x, positions, allowed[:, None])  # (B, T + N, D), before the final norm
        hidden = self.llm.language_model.model.norm(stream)
        logits = self.llm.logits(hidden[:, :t - 1])  # (B, T - 1, vocab): predict tokens 1 .. T-1
        labels = ids[:, 1:].masked_fill(~valid[:, 1:t], -100)
        ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        return self.head(stream[:, t:]), ce  # (B, N, out_dim)
