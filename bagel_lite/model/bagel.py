"""The top-level BAGEL model: one decoder, three ways in, two ways out.

Ways in (each producing rows of the LLM's hidden size D):

* text ids -> ``language_model.model.embed_tokens``;
* an image to *understand* -> SigLIP-NaViT -> ``connector`` -> + ``vit_pos_embed`` (2D sin-cos, by patch id);
* an image latent to *generate* (or a clean latent as context) -> ``vae2llm`` + ``time_embedder(t)``
  + ``latent_pos_embed`` (2D sin-cos, by latent-token id).

Ways out: ``lm_head`` on understanding tokens (next-token logits) and ``llm2vae`` on generation tokens
(the flow-matching velocity of each latent token).

The children and their names are exactly those of the official ``Bagel`` module, so the official
``ema.safetensors`` loads with a plain ``load_state_dict``. The autoencoder is *not* a child: it lives in
its own file (``ae.safetensors``), as in the official release.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import BagelConfig
from .positions import PositionEmbedding, rope_cos_sin
from .qwen2_mot import KV, LanguageModel
from .siglip import MLPConnector, SiglipNaViT
from .timestep import TimestepEmbedder


class Bagel(nn.Module):
    def __init__(self, cfg: BagelConfig):
        super().__init__()
        self.config = cfg
        d = cfg.llm.hidden_size
        self.language_model = LanguageModel(cfg.llm)
        # Generation side: latent tokens in and velocities out.
        self.time_embedder = TimestepEmbedder(d)
        self.vae2llm = nn.Linear(cfg.patch_latent_dim, d)
        self.llm2vae = nn.Linear(d, cfg.patch_latent_dim)
        self.latent_pos_embed = PositionEmbedding(cfg.max_latent_size, d)
        # Understanding side: ViT features in.
        self.vit_model = SiglipNaViT(cfg.vit)
        self.connector = MLPConnector(cfg.vit.hidden_size, d)
        self.vit_pos_embed = PositionEmbedding(cfg.vit_max_num_patch_per_side, d)

    # ------------------------------------------------------------------------------------------------------
    # Ways in

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        """(n,) token ids -> (n, D)."""
        return self.language_model.model.embed_tokens(ids)

    def embed_vit(self, patches: torch.Tensor, position_ids: torch.Tensor, seq_lens: list[int]) -> torch.Tensor:
        """Packed ViT patches (N, 588) of one or more images -> LLM inputs (N, D).

        Each token carries two position signals: SigLIP's learned table inside the encoder, and the 2D
        sin-cos ``vit_pos_embed`` added after the connector, both indexed by the same ids.
        """
        features = self.vit_model(patches, position_ids, seq_lens)  # (N, vit_hidden)
        return self.connector(features) + self.vit_pos_embed(position_ids)  # (N, D)

    def embed_latents(self, x: torch.Tensor, t: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Patchified latents (N, 64) at flow time t ((N,) or (1,), 0 = clean) -> LLM inputs (N, D)."""
        t = t.expand(x.shape[0]) if t.numel() == 1 else t
        return self.vae2llm(x) + self.time_embedder(t) + self.latent_pos_embed(position_ids)

    # ------------------------------------------------------------------------------------------------------
    # The shared decoder, and the ways out

    def hidden_states(self, x: torch.Tensor, gen_mask: torch.Tensor | None, position_ids: torch.Tensor,
                      allowed: torch.Tensor | None, past: list[KV] | None = None):
        """Run the MoT decoder over embedded rows (what comes out of ``embed_*``): hidden states and K/V.

        x: (B, L, D) input rows; gen_mask: (B, L) True for generation-expert tokens (or None: all
        understanding); position_ids: (B, L) 1D RoPE positions; allowed: (B, 1, L, T+L) bool mask over the
        T cached + L new keys, or the same as a ``masks.KeyMask`` (flash-attn on a GPU), or a
        ``PackedMask`` (None = everything visible); past: per-layer cached K/V or None.
        Returns hidden states (B, L, D) after each token's expert's final norm, and per-layer K/V.
        """
        llm = self.config.llm
        cos, sin = rope_cos_sin(position_ids, llm.head_dim, llm.rope_theta, x.dtype)  # (B, L, head_dim)
        return self.language_model.model(x, gen_mask, cos, sin, allowed, past=past)

    def compile_decoder(self, dynamic: bool = True) -> Bagel:
        """Optional compiled mode: ``torch.compile`` the MoT decoder stack in place, with dynamic shapes so that a
        growing context does not recompile at every token. The first calls of each kind (reading a prompt,
        writing a token, a denoising step) compile — tens of seconds on a CPU, which needs a C++ compiler —
        and later ones skip most of the per-operation Python work. The numbers are the eager ones up to
        rounding; ``benchmarks/vs_official.py --compiled`` measures the gain and the compile time."""
        self.language_model.model.compile(dynamic=dynamic)
        return self

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Understanding hidden states (..., D) -> next-token logits (..., vocab)."""
        return self.language_model.lm_head(hidden)

    def velocity(self, hidden: torch.Tensor) -> torch.Tensor:
        """Generation hidden states (..., D) -> predicted flow velocity per latent token (..., 64)."""
        return self.llm2vae(hidden)

    # ------------------------------------------------------------------------------------------------------

    def num_parameters(self) -> dict[str, int]:
        """Total parameters, and those a single token passes through (one expert + shared parts)."""
        total = sum(p.numel() for p in self.parameters())
        llm = sum(p.numel() for p in self.language_model.parameters())
        gen = sum(p.numel() for n, p in self.language_model.named_parameters() if "_moe_gen" in n)
        shared = sum(p.numel() for n, p in self.language_model.named_parameters()
                     if "embed_tokens" in n or "lm_head" in n)
        per_expert = llm - shared - gen  # the understanding expert, same size as the generation expert
        vit = sum(p.numel() for p in self.vit_model.parameters()) + sum(p.numel() for p in self.connector.parameters())
        gen_side = sum(p.numel() for m in (self.time_embedder, self.vae2llm, self.llm2vae) for p in m.parameters())
        return {
            "total": total,
            "language_model": llm,
            "generation_expert": gen,
            # a text token: und expert + embedding + lm_head
            "active_understanding_token": per_expert + shared,
            # a latent token: vae2llm + time embedder -> gen expert -> llm2vae (no embedding, no lm_head)
            "active_generation_token": gen + gen_side,
            "vit_and_connector": vit,
        }
