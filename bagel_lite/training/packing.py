"""BAGEL's training recipe: pack mixed samples into one sequence, then one forward gives both losses.

A training sample is a list of *items*:

* ``Text(ids, loss)``            -> ``<|im_start|> ids <|im_end|>``, a ``causal`` split; with ``loss`` the model
  learns next-token prediction on it (CE at ``<|im_start|>, t_1 .. t_n`` with labels ``t_1 .. t_n, <|im_end|>``);
* ``VitImage(pixels)``           -> ``<|vision_start|> ViT tokens <|vision_end|>``, a ``full`` split;
* ``VaeImage(latent, noisy)``    -> ``<|vision_start|> latent tokens <|vision_end|>``; clean (t = 0) is a ``full``
  split, noisy is a ``noise`` split that carries the flow-matching loss.

``PackedSequence`` concatenates many samples, keeping BAGEL's position rules (text counts up; an image
block shares one position; a noisy image does not advance the counter) and its condition dropout (a dropped
text vanishes without advancing the position; a dropped image still advances it). It needs the model's
*config* (patch sizes, strides), never the model. ``PackedSequence.batch`` draws each noisy image's flow time
(logit-normal, shifted) and its noise, and returns the tensors ``Bagel.forward`` takes (``model.batch.PackedBatch``).
The model then runs once over the packed sequence, masked sample by sample (``masks.PackedMask``, equal to
``masks.dense_mask``), and returns the mean cross-entropy over text targets and the mean squared error of the
predicted velocity ``noise - x_0``. ``packed_loss`` is both steps in one call.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from ..inference.flow import logit_normal_timesteps
from ..loading.tokenizer import SpecialTokens
from ..model.bagel import Bagel
from ..model.batch import PackedBatch
from ..model.config import BagelConfig
from ..model.patchify import image_position_ids, patchify


@dataclass
class Text:
    ids: list[int]
    loss: bool = False
    drop_prob: float = 0.0  # condition dropout (CFG): the text may vanish


@dataclass
class VitImage:
    pixels: torch.Tensor  # (3, H, W) in [-1, 1]
    drop_prob: float = 0.0


@dataclass
class VaeImage:
    latent: torch.Tensor  # (C, H/8, W/8) scaled latent (already encoded)
    noisy: bool = False  # True: a generation target with the MSE loss
    drop_prob: float = 0.0


@dataclass
class PackedSequence:
    """Index lists of one packed training sequence (all samples concatenated)."""

    special: SpecialTokens
    length: int = 0
    position_ids: list[int] = field(default_factory=list)
    sample_lens: list[int] = field(default_factory=list)
    split_lens: list[int] = field(default_factory=list)
    attn_modes: list[str] = field(default_factory=list)
    text_ids: list[int] = field(default_factory=list)
    text_index: list[int] = field(default_factory=list)
    ce_index: list[int] = field(default_factory=list)
    ce_labels: list[int] = field(default_factory=list)
    vit_patches: list[torch.Tensor] = field(default_factory=list)
    vit_pos: list[torch.Tensor] = field(default_factory=list)
    vit_index: list[int] = field(default_factory=list)
    vit_lens: list[int] = field(default_factory=list)
    latents: list[torch.Tensor] = field(default_factory=list)  # (n_i, 64) per image
    latent_pos: list[torch.Tensor] = field(default_factory=list)
    latent_index: list[int] = field(default_factory=list)
    latent_noisy: list[bool] = field(default_factory=list)  # per image

    def _split(self, n: int, mode: str, position: int | list[int]):
        start = self.length
        self.length += n
        self.split_lens.append(n)
        self.attn_modes.append(mode)
        self.position_ids += position if isinstance(position, list) else [position] * n
        return list(range(start, start + n))

    def add_sample(self, items: list, cfg: BagelConfig, rng: random.Random) -> None:
        """Append one sample's items (sizes from ``cfg``, the model's config), applying condition dropout with
        ``rng``."""
        if not isinstance(cfg, BagelConfig):
            raise TypeError(f"add_sample takes the model's config (a BagelConfig), not {type(cfg).__name__}: "
                            "call seq.add_sample(items, model.config, rng)")
        start, rope = self.length, 0
        for item in items:
            dropped = item.drop_prob > 0 and rng.random() < item.drop_prob
            if isinstance(item, Text):
                if dropped:
                    continue  # a dropped text leaves no trace, not even a position
                ids = [self.special.bos, *item.ids, self.special.eos]
                index = self._split(len(ids), "causal", list(range(rope, rope + len(ids))))
                self.text_ids += ids
                self.text_index += index
                if item.loss:  # predict t_1 .. t_n, <|im_end|> from <|im_start|>, t_1 .. t_n
                    self.ce_index += index[:-1]
                    self.ce_labels += ids[1:]
                rope += len(ids)
                continue
            if dropped:
                rope += 1  # a dropped image still takes its position
                continue
            if isinstance(item, VitImage):
                patches = patchify(item.pixels, cfg.vit.patch_size)  # (n, p*p*3)
                ids = image_position_ids(cfg, item.pixels.shape[1:], "vit")
                index = self._split(len(ids) + 2, "full", rope)
                self.vit_patches.append(patches)
                self.vit_pos.append(ids)
                self.vit_index += index[1:-1]
                self.vit_lens.append(len(ids))
            else:  # VaeImage
                c, lh, lw = item.latent.shape
                p = cfg.latent_patch_size
                tokens = patchify(item.latent, p)  # (n, p*p*C)
                ids = image_position_ids(cfg, (lh * cfg.vae.downsample, lw * cfg.vae.downsample), "vae")
                index = self._split(len(ids) + 2, "noise" if item.noisy else "full", rope)
                self.latents.append(tokens)
                self.latent_pos.append(ids)
                self.latent_index += index[1:-1]
                self.latent_noisy.append(item.noisy)
            self.text_ids += [self.special.start_of_image, self.special.end_of_image]  # the markers are text
            self.text_index += [index[0], index[-1]]
            if not (isinstance(item, VaeImage) and item.noisy):
                rope += 1  # a noisy target does not advance the position
        self.sample_lens.append(self.length - start)

    def batch(self, timestep_shift: float = 1.0, generator: torch.Generator | None = None,
              device: torch.device | str = "cpu") -> PackedBatch:
        """The tensors of this sequence, with a flow time per noisy image (logit-normal, then ``timestep_shift``;
        0 for a clean context image) and the noise of every latent token, both drawn from ``generator``."""
        if not self.sample_lens:
            raise ValueError("this packed sequence is empty: add samples with add_sample before making a batch")

        def idx(values):
            return torch.tensor(values, dtype=torch.long)

        b = PackedBatch(sequence_length=self.length, sample_lens=list(self.sample_lens),
                        split_lens=list(self.split_lens), attn_modes=list(self.attn_modes),
                        packed_position_ids=idx(self.position_ids), packed_text_ids=idx(self.text_ids),
                        packed_text_indexes=idx(self.text_index))
        if self.vit_patches:
            b.packed_vit_tokens = torch.cat(self.vit_patches)  # (n_vit, p * p * 3)
            b.packed_vit_position_ids = torch.cat(self.vit_pos)
            b.packed_vit_token_indexes = idx(self.vit_index)
            b.vit_token_seqlens = list(self.vit_lens)
        if self.latents:
            x0 = torch.cat(self.latents)  # (n_lat, 4 * z)
            counts = torch.tensor([len(t) for t in self.latents])
            noisy = torch.tensor(self.latent_noisy)
            # one flow time per image: logit-normal (with shift) for targets, 0 for clean context images
            t_img = torch.where(noisy, logit_normal_timesteps(len(counts), timestep_shift, generator), 0.0)
            b.packed_latent_clean = x0
            b.packed_timesteps = torch.repeat_interleave(t_img, counts)  # (n_lat,)
            b.packed_noise = torch.randn(x0.shape, generator=generator)  # (n_lat, 4 * z)
            b.packed_latent_position_ids = torch.cat(self.latent_pos)
            b.packed_vae_token_indexes = idx(self.latent_index)
            b.mse_loss_indexes = b.packed_vae_token_indexes[torch.repeat_interleave(noisy, counts)]
        if self.ce_index:
            b.ce_loss_indexes, b.packed_label_ids = idx(self.ce_index), idx(self.ce_labels)
        return b.to(device)


def packed_loss(model: Bagel, seq: PackedSequence, timestep_shift: float = 1.0,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """One forward over a packed sequence: ``model(seq.batch(...))``. Returns {"loss", "ce", "mse", "ce_tokens",
    "mse_tokens"} (``Bagel.forward``), with CE and MSE weighted 1 : 1 as micro-BAGEL trains."""
    device = model.vae2llm.weight.device
    return model(seq.batch(timestep_shift, generator, device), ce_weight=1.0, mse_weight=1.0)
