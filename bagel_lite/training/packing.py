"""BAGEL's training recipe: pack mixed samples into one sequence, then one forward gives both losses.

A training sample is a list of *items*:

* ``Text(ids, loss)``            -> ``<|im_start|> ids <|im_end|>``, a ``causal`` split; with ``loss`` the model
  learns next-token prediction on it (CE at ``<|im_start|>, t_1 .. t_n`` with labels ``t_1 .. t_n, <|im_end|>``);
* ``VitImage(pixels)``           -> ``<|vision_start|> ViT tokens <|vision_end|>``, a ``full`` split;
* ``VaeImage(latent, noisy)``    -> ``<|vision_start|> latent tokens <|vision_end|>``; clean (t = 0) is a ``full``
  split, noisy is a ``noise`` split that carries the flow-matching loss.

``PackedSequence`` concatenates many samples, keeping BAGEL's position rules (text counts up; an image
block shares one position; a noisy image does not advance the counter) and its condition dropout (a dropped
text vanishes without advancing the position; a dropped image still advances it). ``packed_loss`` runs the
model once over the packed sequence, masked sample by sample (``masks.PackedMask``, equal to ``masks.dense_mask``),
and returns the mean cross-entropy over text targets and the mean squared error of the predicted velocity
``noise - x_0``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..inference.flow import add_noise, logit_normal_timesteps
from ..loading.tokenizer import SpecialTokens
from ..model.bagel import Bagel
from ..model.masks import PackedMask
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

    def add_sample(self, items: list, model: Bagel, rng: random.Random) -> None:
        """Append one sample's items (sizes from ``model.config``), applying condition dropout with ``rng``."""
        start, rope = self.length, 0
        mcfg = model.config
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
                patches = patchify(item.pixels, mcfg.vit.patch_size)  # (n, p*p*3)
                ids = image_position_ids(mcfg, item.pixels.shape[1:], "vit")
                index = self._split(len(ids) + 2, "full", rope)
                self.vit_patches.append(patches)
                self.vit_pos.append(ids)
                self.vit_index += index[1:-1]
                self.vit_lens.append(len(ids))
            else:  # VaeImage
                c, lh, lw = item.latent.shape
                p = mcfg.latent_patch_size
                tokens = patchify(item.latent, p)  # (n, p*p*C)
                ids = image_position_ids(mcfg, (lh * mcfg.vae.downsample, lw * mcfg.vae.downsample), "vae")
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


def packed_loss(model: Bagel, seq: PackedSequence, timestep_shift: float = 1.0,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """One forward over a packed sequence. Returns {"ce", "mse", "ce_tokens", "mse_tokens"}."""
    device = model.vae2llm.weight.device
    d = model.config.llm.hidden_size
    length = seq.length

    def idx(values):
        return torch.tensor(values, dtype=torch.long, device=device)

    x = torch.zeros(length, d, device=device)  # (L, D) the packed input rows
    x = x.index_put((idx(seq.text_index),), model.embed_text(idx(seq.text_ids)).float())
    if seq.vit_patches:
        vit = model.embed_vit(torch.cat(seq.vit_patches).to(device), torch.cat(seq.vit_pos).to(device), seq.vit_lens)
        x = x.index_put((idx(seq.vit_index),), vit.float())

    gen_mask = torch.zeros(length, dtype=torch.bool, device=device)
    mse = ce = torch.zeros((), device=device)
    mse_tokens = 0
    if seq.latents:
        x0 = torch.cat(seq.latents).to(device)  # (M, 64)
        counts = [len(t) for t in seq.latents]
        noisy = torch.tensor(seq.latent_noisy, device=device)
        # one flow time per image: logit-normal (with shift) for targets, 0 for clean context images
        t_img = torch.where(noisy, logit_normal_timesteps(len(counts), timestep_shift, generator).to(device), 0.0)
        t = torch.repeat_interleave(t_img, torch.tensor(counts, device=device))  # (M,)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        x_t = add_noise(x0, noise, t)
        rows = model.embed_latents(x_t, t, torch.cat(seq.latent_pos).to(device))
        lat_index = idx(seq.latent_index)
        x = x.index_put((lat_index,), rows.float())
        gen_mask[lat_index] = True
        token_noisy = torch.repeat_interleave(noisy, torch.tensor(counts, device=device))  # (M,)
        mse_tokens = int(token_noisy.sum())

    # the causal / full / noise mask of every sample, applied sample by sample (see masks.PackedMask)
    allowed = PackedMask(seq.sample_lens, seq.split_lens, seq.attn_modes, device)
    positions = idx(seq.position_ids)
    hidden, _ = model.hidden_states(x[None], gen_mask[None], positions[None], allowed)
    hidden = hidden[0]  # (L, D)

    if mse_tokens:
        target_rows = lat_index[token_noisy]
        pred = model.velocity(hidden[target_rows]).float()  # (M_noisy, 64)
        target = (noise - x0)[token_noisy]
        mse = ((pred - target) ** 2).mean()
    if seq.ce_index:
        logits = model.logits(hidden[idx(seq.ce_index)]).float()  # (n_ce, vocab)
        ce = F.cross_entropy(logits, idx(seq.ce_labels))
    return {"ce": ce, "mse": mse, "ce_tokens": len(seq.ce_index), "mse_tokens": mse_tokens}
