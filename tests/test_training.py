"""BAGEL's training recipe: packing rules, and a short training run that lowers both losses."""

from __future__ import annotations

import random

import torch

from bagel_lite.loading.checkpoint import build
from bagel_lite.loading.tokenizer import SpecialTokens
from bagel_lite.model import config
from bagel_lite.training.packing import PackedSequence, Text, VaeImage, VitImage, packed_loss

SPECIAL = SpecialTokens(bos=400, eos=401, start_of_image=402, end_of_image=403)


def tiny_model():
    torch.manual_seed(0)
    return build(config.tiny())[0]


def edit_sample(drop=0.0):
    latent = torch.randn(16, 4, 4)  # a 32x32 image: 2x2 latent tokens
    return [VaeImage(latent, drop_prob=drop), VitImage(torch.zeros(3, 28, 28), drop_prob=drop),
            Text([5, 6, 7]), VaeImage(torch.randn(16, 4, 4), noisy=True)]


def test_positions_splits_and_labels_of_an_edit_sample():
    model = tiny_model()
    seq = PackedSequence(SPECIAL)
    seq.add_sample(edit_sample() + [Text([8, 9], loss=True)], model, random.Random(0))
    # clean VAE block (4+2) at 0, ViT block (4+2) at 1, text (3+2) at 2..6, noisy block (4+2) at 7, then text at 7..
    assert seq.position_ids == [0] * 6 + [1] * 6 + [2, 3, 4, 5, 6] + [7] * 6 + [7, 8, 9, 10]
    assert seq.attn_modes == ["full", "full", "causal", "noise", "causal"]
    assert seq.split_lens == [6, 6, 5, 6, 4]
    assert seq.ce_labels == [8, 9, SPECIAL.eos]  # next-token targets of <|im_start|> 8 9
    assert seq.latent_noisy == [False, True]


def test_condition_dropout_rules():
    model = tiny_model()
    seq = PackedSequence(SPECIAL)
    seq.add_sample(edit_sample(drop=1.0), model, random.Random(0))  # both images dropped
    assert seq.position_ids[:5] == [2, 3, 4, 5, 6], "a dropped image still takes its position"
    seq = PackedSequence(SPECIAL)
    seq.add_sample([Text([5, 6], drop_prob=1.0), VaeImage(torch.randn(16, 4, 4), noisy=True)], model,
                   random.Random(0))
    assert seq.position_ids == [0] * 6, "a dropped text leaves no position behind"


def test_short_training_lowers_both_losses():
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = random.Random(0)
    latents = [torch.randn(16, 4, 4) for _ in range(4)]  # four "images" the model learns to draw

    def batch():
        seq = PackedSequence(SPECIAL)
        for _ in range(8):
            i = rng.randrange(4)
            seq.add_sample([Text([10 + i, 20 + i]), VaeImage(latents[i], noisy=True)], model, rng)
            seq.add_sample([VitImage(torch.full((3, 28, 28), i / 4)), Text([30 + i], loss=True)], model, rng)
        return seq

    fixed = batch()

    def loss_on_fixed():
        with torch.no_grad():
            out = packed_loss(model, fixed, generator=torch.Generator().manual_seed(0))
        return out["ce"].item(), out["mse"].item()

    ce0, mse0 = loss_on_fixed()
    for _ in range(60):
        out = packed_loss(model, batch(), generator=torch.Generator().manual_seed(rng.randrange(10**6)))
        opt.zero_grad()
        (out["ce"] + out["mse"]).backward()
        opt.step()
    ce1, mse1 = loss_on_fixed()
    assert ce1 < 0.5 * ce0, (ce0, ce1)
    assert mse1 < 0.9 * mse0, (mse0, mse1)


def test_packed_attention_equals_the_dense_mask():
    from bagel_lite.model.attention import attend
    from bagel_lite.model.masks import PackedMask, dense_mask

    sample_lens, split_lens = [7, 9], [3, 4, 2, 5, 2]
    modes = ["causal", "noise", "full", "causal", "full"]
    q, k, v = torch.randn(1, 4, 16, 8), torch.randn(1, 2, 16, 8), torch.randn(1, 2, 16, 8)
    dense = attend(q, k, v, dense_mask(sample_lens, split_lens, modes)[None, None])
    packed = attend(q, k, v, PackedMask(sample_lens, split_lens, modes))
    torch.testing.assert_close(packed, dense)
