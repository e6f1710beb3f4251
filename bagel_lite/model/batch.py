"""One packed training batch as tensors: what ``Bagel.forward`` takes.

Training packs many samples (a prompt and its noisy image, a picture and a question with its answer, an edit)
into **one** sequence of length L. Every tensor below says where each kind of token goes in that sequence
(``*_indexes``: positions 0..L-1) and what it carries. The field names are the official trainer's
(``packed_text_ids``, ``packed_vae_token_indexes``, ``mse_loss_indexes``, ...), so a reader can follow a batch
from one code base to the other. ``training.packing.PackedSequence.batch`` builds it from samples.

One difference from the official ``forward``, on purpose: the official model draws the flow noise itself
(``randn_like`` inside ``forward``) and turns raw timesteps into t there (sigmoid, then the shift). Here the
batch already carries the noise and each latent token's t, so ``forward`` is a pure function of the weights
and the batch: two processes given the same batch compute the same loss, which is what the data-parallel tests
check, and a learner can look at the noise a loss was computed with.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class PackedBatch:
    sequence_length: int  # L, the packed sequence's length
    sample_lens: list[int]  # tokens per sample (they sum to L); attention never crosses samples
    split_lens: list[int]  # tokens per split, in order, across all samples
    attn_modes: list[str]  # per split: "causal" (text), "full" (a clean image), "noise" (an image to denoise)
    packed_position_ids: torch.Tensor  # (L,) long: RoPE positions (an image shares one position)
    packed_text_ids: torch.Tensor  # (n_text,) long: text tokens, image markers included
    packed_text_indexes: torch.Tensor  # (n_text,) long: where they sit in the sequence
    # Understanding images: ViT patches of all of them, packed (NaViT), and where their tokens sit
    packed_vit_tokens: torch.Tensor | None = None  # (n_vit, patch * patch * 3)
    packed_vit_position_ids: torch.Tensor | None = None  # (n_vit,) long: patch id row * side + col
    packed_vit_token_indexes: torch.Tensor | None = None  # (n_vit,) long
    vit_token_seqlens: list[int] | None = None  # patches per image
    # Generation images: 2x2-patchified latents, clean and noised, each token's flow time t
    packed_latent_clean: torch.Tensor | None = None  # (n_lat, 4 * z_channels): x_0
    packed_noise: torch.Tensor | None = None  # (n_lat, 4 * z_channels): x_1 (unused where t = 0)
    packed_timesteps: torch.Tensor | None = None  # (n_lat,) float: t per token, 0 for a clean context image
    packed_latent_position_ids: torch.Tensor | None = None  # (n_lat,) long
    packed_vae_token_indexes: torch.Tensor | None = None  # (n_lat,) long
    mse_loss_indexes: torch.Tensor | None = None  # (n_mse,) long: sequence positions of noisy latent tokens
    # Text targets: the hidden state at ce_loss_indexes predicts packed_label_ids
    ce_loss_indexes: torch.Tensor | None = None  # (n_ce,) long
    packed_label_ids: torch.Tensor | None = None  # (n_ce,) long

    def to(self, device: torch.device | str) -> PackedBatch:
        """The same batch with every tensor on ``device`` (lists and numbers unchanged)."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return PackedBatch(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in moved.items()})

    @property
    def num_ce_tokens(self) -> int:
        return 0 if self.ce_loss_indexes is None else len(self.ce_loss_indexes)

    @property
    def num_mse_tokens(self) -> int:
        return 0 if self.mse_loss_indexes is None else len(self.mse_loss_indexes)


# The official trainer's default weights of the two losses (loss = ce_weight * CE + mse_weight * MSE).
CE_WEIGHT = 1.0
MSE_WEIGHT = 1.0
