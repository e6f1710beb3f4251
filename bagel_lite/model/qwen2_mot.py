"""Qwen2 with a Mixture of Transformer Experts (MoT): the one decoder that both reads and draws.

Every decoder layer holds **two complete sets of weights** — the *understanding* expert (the original
Qwen2.5 weights, no suffix) and the *generation* expert (suffix ``_moe_gen``): norms, q/k/v/o projections,
QK-norms and MLP. Each token goes through exactly one of them, chosen by its type, not by a learned router:

* text tokens, image markers and ViT tokens -> understanding expert;
* VAE latent tokens (clean context or noisy target) -> generation expert.

What the experts share is the **attention**: queries of every token attend over the keys and values of all
visible tokens, whichever expert made them. That is how text conditions the image and the image the text.
``gen_mask`` (True = generation expert) is the whole routing decision; see ``by_expert``.

Attention here is grouped-query (28 query heads share 4 KV heads in the full model), with QK-norm
(RMSNorm over each head, before RoPE) and 1D RoPE with theta = 1e6.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import attend
from .config import LLMConfig
from .positions import apply_rope

# A layer's keys and values for the tokens seen so far: (B, num_kv_heads, T, head_dim) each.
KV = tuple[torch.Tensor, torch.Tensor]


class Qwen2RMSNorm(nn.Module):
    """RMSNorm: normalise in float32, cast back to the input dtype, then scale by the weight."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x / sqrt(mean(x^2) + eps) in one fused call (five separate ops cost a token step ~5 us each)
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * normed.to(x.dtype)


class Qwen2MLP(nn.Module):
    """SwiGLU feed-forward: ``down(silu(gate(x)) * up(x))``, no biases."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


@dataclass(frozen=True)
class Routing:
    """Which rows of a (B, L) batch each expert takes, worked out once per forward pass.

    The row indices of each expert are found once (one host sync), so that the seven ``by_expert`` calls of
    every layer gather and scatter with them without asking the device again: on a GPU that lets the CPU
    keep queueing work while the GPU computes.
    """

    shape: tuple[int, int]  # (B, L)
    und: torch.Tensor  # (num_und_tokens,) flat row indices into B*L
    gen: torch.Tensor  # (num_gen_tokens,)

    @classmethod
    def of(cls, gen_mask: torch.Tensor) -> Routing:
        """gen_mask: (B, L) bool, True = generation expert."""
        flat = gen_mask.reshape(-1)  # (B*L,)
        return cls(tuple(gen_mask.shape), (~flat).nonzero().squeeze(1), flat.nonzero().squeeze(1))

    def to(self, device) -> Routing:  # layers may sit on several GPUs (see devices.py)
        return self if self.und.device == device else replace(self, und=self.und.to(device), gen=self.gen.to(device))


def by_expert(x: torch.Tensor, gen_mask: torch.Tensor | Routing | None, und: Callable, gen: Callable) -> torch.Tensor:
    """Apply ``und`` to the tokens where ``gen_mask`` is False and ``gen`` where it is True.

    x: (B, L, ...) ; gen_mask: (B, L) bool (or its ``Routing``), or None for "all understanding". The tokens
    of each expert are gathered, transformed by that expert, and scattered back into place: this is MoT
    routing.
    """
    if gen_mask is None:
        return und(x)
    route = gen_mask if isinstance(gen_mask, Routing) else Routing.of(gen_mask)
    if len(route.gen) == 0:
        return und(x)
    if len(route.und) == 0:
        return gen(x)
    route = route.to(x.device)
    rows = x.flatten(0, 1)  # (B*L, ...)
    und_out = und(rows.index_select(0, route.und))  # (num_und_tokens, ...)
    gen_out = gen(rows.index_select(0, route.gen))  # (num_gen_tokens, ...)
    out = und_out.new_empty(rows.shape[0], *und_out.shape[1:])  # (B*L, ...)
    out.index_copy_(0, route.und, und_out)
    out.index_copy_(0, route.gen, gen_out)
    return out.unflatten(0, route.shape)  # (B, L, ...)


class PackedAttentionMoT(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        d, hd = cfg.hidden_size, cfg.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, hd
        q_out, kv_out, eps = self.num_heads * hd, self.num_kv_heads * hd, cfg.rms_norm_eps
        # the understanding expert: Qwen2.5's own projections (with biases on q, k, v) and BAGEL's QK-norms
        self.q_proj = nn.Linear(d, q_out)
        self.k_proj = nn.Linear(d, kv_out)
        self.v_proj = nn.Linear(d, kv_out)
        self.o_proj = nn.Linear(q_out, d, bias=False)
        self.q_norm = Qwen2RMSNorm(hd, eps)  # over each head, before RoPE
        self.k_norm = Qwen2RMSNorm(hd, eps)
        # the generation expert: the same shapes again, for VAE latent tokens (built in this order, so that a
        # seeded model gets the same initial weights as before)
        self.q_proj_moe_gen = nn.Linear(d, q_out)
        self.k_proj_moe_gen = nn.Linear(d, kv_out)
        self.v_proj_moe_gen = nn.Linear(d, kv_out)
        self.o_proj_moe_gen = nn.Linear(q_out, d, bias=False)
        self.q_norm_moe_gen = Qwen2RMSNorm(hd, eps)
        self.k_norm_moe_gen = Qwen2RMSNorm(hd, eps)

    def _heads(self, proj: nn.Linear, norm: nn.Module | None, heads: int):
        def fn(a):  # (..., hidden) -> (..., heads, head_dim), QK-normed if a norm is given
            out = proj(a).unflatten(-1, (heads, self.head_dim))
            return out if norm is None else norm(out)

        return fn

    def forward(self, x, gen_mask, cos, sin, allowed, *, past: KV | None = None):
        """x: (B, L, hidden); cos/sin: (B, L, head_dim); allowed: (B, 1, L, T+L) bool, a mask object of
        ``masks`` (KeyMask, PackedMask) or None.

        Returns the attention output (B, L, hidden) and this layer's keys/values for the T cached plus L new
        tokens (B, num_kv_heads, T+L, head_dim).
        """
        H, Hkv = self.num_heads, self.num_kv_heads
        q = by_expert(x, gen_mask, self._heads(self.q_proj, self.q_norm, H),
                      self._heads(self.q_proj_moe_gen, self.q_norm_moe_gen, H))  # (B, L, H, hd)
        k = by_expert(x, gen_mask, self._heads(self.k_proj, self.k_norm, Hkv),
                      self._heads(self.k_proj_moe_gen, self.k_norm_moe_gen, Hkv))  # (B, L, Hkv, hd)
        v = by_expert(x, gen_mask, self._heads(self.v_proj, None, Hkv),
                      self._heads(self.v_proj_moe_gen, None, Hkv))  # (B, L, Hkv, hd)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, L, hd)
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, L, hd): same angle for every head
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B, Hkv, T+L, hd)
        out = attend(q, k, v, allowed)  # (B, H, L, hd): one joint attention over both experts' tokens
        out = out.transpose(1, 2).flatten(2)  # (B, L, H*hd)
        return by_expert(out, gen_mask, self.o_proj, self.o_proj_moe_gen), (k, v)


class Qwen2MoTDecoderLayer(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        d, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.self_attn = PackedAttentionMoT(cfg)
        self.mlp = Qwen2MLP(d, cfg.intermediate_size)
        self.mlp_moe_gen = Qwen2MLP(d, cfg.intermediate_size)
        self.input_layernorm = Qwen2RMSNorm(d, eps)
        self.input_layernorm_moe_gen = Qwen2RMSNorm(d, eps)
        self.post_attention_layernorm = Qwen2RMSNorm(d, eps)
        self.post_attention_layernorm_moe_gen = Qwen2RMSNorm(d, eps)

    def forward(self, x, gen_mask, cos, sin, allowed, *, past: KV | None = None):
        a = by_expert(x, gen_mask, self.input_layernorm, self.input_layernorm_moe_gen)
        attn_out, kv = self.self_attn(a, gen_mask, cos, sin, allowed, past=past)
        x = x + attn_out
        a = by_expert(x, gen_mask, self.post_attention_layernorm, self.post_attention_layernorm_moe_gen)
        x = x + by_expert(a, gen_mask, self.mlp, self.mlp_moe_gen)
        return x, kv


class MoTDecoder(nn.Module):
    """Token embedding, the MoT layers and each expert's final norm: embeddings in, hidden states out (the
    checkpoint's ``language_model.model.*``; transformers' ``Qwen2Model`` with a second expert per layer)."""

    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Qwen2MoTDecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = Qwen2RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.norm_moe_gen = Qwen2RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.checkpointing = False  # training: recompute each layer in backward instead of keeping its activations

    def forward(self, x, gen_mask, cos, sin, allowed, *, past: list[KV] | None = None):
        """x: (B, L, hidden) input embeddings. Returns final hidden states (B, L, hidden) and per-layer K/V."""
        route = None if gen_mask is None else Routing.of(gen_mask)  # found once, used by every layer
        recompute = self.checkpointing and self.training and past is None and torch.is_grad_enabled()
        kvs = []
        for i, layer in enumerate(self.layers):
            if recompute:  # backward runs the layer again from its input x (kept) instead of its saved activations
                x, kv = checkpoint(layer, x, route, cos, sin, allowed, use_reentrant=False)
            else:
                x, kv = layer(x, route, cos, sin, allowed, past=None if past is None else past[i])
            kvs.append(kv)
        return by_expert(x, route, self.norm, self.norm_moe_gen), kvs


class LanguageModel(nn.Module):
    """The MoT decoder (``model``) plus the untied ``lm_head`` that turns understanding states into next-token
    logits. Only a holder of the two, named as in the checkpoint (``language_model.model.*``,
    ``language_model.lm_head.*``): unlike transformers' ``Qwen2ForCausalLM`` it has no ``forward``;
    ``Bagel.hidden_states`` and ``Bagel.logits`` run its parts."""

    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.model = MoTDecoder(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
