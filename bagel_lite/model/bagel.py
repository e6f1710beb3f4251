"""The top-level BAGEL model: one decoder, three ways in, two ways out.

Ways in (each producing rows of the LLM's hidden size D):

* text ids -> ``language_model.model.embed_tokens``;
* an image to *understand* -> SigLIP-NaViT -> ``connector`` -> + ``vit_pos_embed`` (2D sin-cos, by patch id);
* an image latent to *generate* (or a clean latent as context) -> ``vae2llm`` + ``time_embedder(t)``
  + ``latent_pos_embed`` (2D sin-cos, by latent-token id).

Ways out: ``lm_head`` on understanding tokens (next-token logits) and ``llm2vae`` on generation tokens
(the flow-matching velocity of each latent token).

``forward`` is training's one entry point: a packed batch (``batch.PackedBatch``) in, both losses out. Training
engines (accelerate, DDP, FSDP) wrap a module by its ``forward``; inference calls the ways in and out one by one
(``inference.engine``), because it reads and writes a KV cache step by step.

The children and their names are exactly those of the official ``Bagel`` module, so the official
``ema.safetensors`` loads with a plain ``load_state_dict``. The autoencoder is *not* a child: it lives in
its own file (``ae.safetensors``), as in the official release.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .batch import CE_WEIGHT, MSE_WEIGHT, PackedBatch
from .config import BagelConfig
from .masks import PackedMask
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
        if not self.config.mot:  # a dense model: every token through the understanding expert
            gen_mask = None
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
    # Training: one packed batch in, the two losses out

    def forward(self, batch: PackedBatch, ce_weight: float = CE_WEIGHT,
                mse_weight: float = MSE_WEIGHT) -> dict[str, torch.Tensor]:
        """Embed every token of the packed sequence, run the MoT decoder once (each sample sees only itself, with
        its causal / full / noise splits), and score both ways out:

        * ``ce``: mean cross-entropy of the logits at ``ce_loss_indexes`` against ``packed_label_ids``;
        * ``mse``: mean squared error of the velocity predicted at ``mse_loss_indexes`` against the flow's true
          velocity ``x_1 - x_0`` (noise minus clean latent: t runs from 0 = image to 1 = noise);
        * ``loss`` = ``ce_weight * ce + mse_weight * mse``, what the optimiser minimises.

        Also returns the token counts (``ce_tokens``, ``mse_tokens``). Works in float32 and bfloat16 (bf16
        weights, or float32 weights under autocast); the losses are computed in float32.
        """
        b, d = batch, self.config.llm.hidden_size
        x = self.embed_text(b.packed_text_ids)  # (n_text, D): its dtype is the packed rows' dtype
        rows = x.new_zeros(b.sequence_length, d)  # (L, D) the packed input rows
        rows = rows.index_put((b.packed_text_indexes,), x)
        if b.vit_token_seqlens:
            patches = b.packed_vit_tokens.to(self.connector.fc1.weight.dtype)  # pixels in the weights' dtype
            vit = self.embed_vit(patches, b.packed_vit_position_ids, b.vit_token_seqlens)  # (n_vit, D)
            rows = rows.index_put((b.packed_vit_token_indexes,), vit.to(rows.dtype))
        gen_mask = torch.zeros(b.sequence_length, dtype=torch.bool, device=rows.device)  # (L,) True: gen expert
        if b.packed_vae_token_indexes is not None and len(b.packed_vae_token_indexes):
            t = b.packed_timesteps[:, None]  # (n_lat, 1)
            x_t = (1 - t) * b.packed_latent_clean + t * b.packed_noise  # the straight path from x_0 to x_1
            lat = self.embed_latents(x_t.to(rows.dtype), b.packed_timesteps, b.packed_latent_position_ids)
            rows = rows.index_put((b.packed_vae_token_indexes,), lat.to(rows.dtype))
            gen_mask[b.packed_vae_token_indexes] = True

        allowed = PackedMask(b.sample_lens, b.split_lens, b.attn_modes, rows.device)
        hidden, _ = self.hidden_states(rows[None], gen_mask[None], b.packed_position_ids[None], allowed)
        hidden = hidden[0]  # (L, D)

        zero = hidden.new_zeros((), dtype=torch.float32)
        mse = ce = zero
        if b.num_mse_tokens:
            pred = self.velocity(hidden[b.mse_loss_indexes]).float()  # (n_mse, 4 * z_channels)
            noisy = b.packed_timesteps > 0  # (n_lat,): the latent tokens that carry the loss, in the same order
            target = (b.packed_noise - b.packed_latent_clean)[noisy].float()
            mse = ((pred - target) ** 2).mean()
        if b.num_ce_tokens:
            logits = self.logits(hidden[b.ce_loss_indexes]).float()  # (n_ce, vocab)
            ce = F.cross_entropy(logits, b.packed_label_ids)
        return {"loss": ce_weight * ce + mse_weight * mse, "ce": ce, "mse": mse,
                "ce_tokens": b.num_ce_tokens, "mse_tokens": b.num_mse_tokens}

    def set_checkpointing(self, on: bool = True) -> Bagel:
        """Activation checkpointing per decoder layer: in training, keep only each layer's input for backward and
        recompute the layer then (about one more forward of compute, a layer's activations instead of all)."""
        self.language_model.model.checkpointing = on
        return self

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
