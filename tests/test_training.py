"""BAGEL's training recipe: packing rules, and a short training run that lowers both losses."""

from __future__ import annotations

import random

import pytest
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
    seq.add_sample(edit_sample() + [Text([8, 9], loss=True)], model.config, random.Random(0))
    # clean VAE block (4+2) at 0, ViT block (4+2) at 1, text (3+2) at 2..6, noisy block (4+2) at 7, then text at 7..
    assert seq.position_ids == [0] * 6 + [1] * 6 + [2, 3, 4, 5, 6] + [7] * 6 + [7, 8, 9, 10]
    assert seq.attn_modes == ["full", "full", "causal", "noise", "causal"]
    assert seq.split_lens == [6, 6, 5, 6, 4]
    assert seq.ce_labels == [8, 9, SPECIAL.eos]  # next-token targets of <|im_start|> 8 9
    assert seq.latent_noisy == [False, True]


def test_condition_dropout_rules():
    model = tiny_model()
    seq = PackedSequence(SPECIAL)
    seq.add_sample(edit_sample(drop=1.0), model.config, random.Random(0))  # both images dropped
    assert seq.position_ids[:5] == [2, 3, 4, 5, 6], "a dropped image still takes its position"
    seq = PackedSequence(SPECIAL)
    seq.add_sample([Text([5, 6], drop_prob=1.0), VaeImage(torch.randn(16, 4, 4), noisy=True)], model.config,
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
            seq.add_sample([Text([10 + i, 20 + i]), VaeImage(latents[i], noisy=True)], model.config, rng)
            seq.add_sample([VitImage(torch.full((3, 28, 28), i / 4)), Text([30 + i], loss=True)], model.config, rng)
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


def mixed_batch(model, seed=0):
    """A packed batch of every kind of sample: text-to-image, a question with its answer, an edit."""
    rng = random.Random(seed)
    seq = PackedSequence(SPECIAL)
    seq.add_sample([Text([10, 11, 12]), VaeImage(torch.randn(16, 4, 4), noisy=True)], model.config, rng)
    seq.add_sample([VitImage(torch.rand(3, 28, 28) * 2 - 1), Text([30, 31]), Text([32, 33], loss=True)],
                   model.config, rng)
    seq.add_sample(edit_sample() + [Text([8, 9], loss=True)], model.config, rng)
    return seq.batch(3.0, torch.Generator().manual_seed(seed))


def grads_of(model, out):
    model.zero_grad(set_to_none=True)
    out["loss"].backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_forward_is_one_call_that_training_engines_can_wrap():
    """``model(batch)`` gives both losses and their weighted sum; the batch carries its noise and times, so the
    same batch gives the same loss (a pure function: what data-parallel processes rely on)."""
    model = tiny_model()
    batch = mixed_batch(model)
    out = model(batch, ce_weight=0.5, mse_weight=2.0)
    assert out["ce_tokens"] == 6 and out["mse_tokens"] == 8  # (32, 33, eos) + (8, 9, eos); two 2x2 targets
    torch.testing.assert_close(out["loss"], 0.5 * out["ce"] + 2.0 * out["mse"])
    assert torch.equal(model(batch)["loss"], model(batch)["loss"])
    # the batch's times: one per noisy image, 0 for the edit's clean input; every gen token is routed to gen
    t = batch.packed_timesteps
    assert (t[:4] > 0).all() and (t[4:8] == 0).all() and (t[8:] > 0).all() and len(t.unique()) == 3
    assert len(batch.mse_loss_indexes) == 8


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    model = tiny_model().train()
    batch = mixed_batch(model)
    plain = grads_of(model, out := model(batch))
    model.set_checkpointing(True)
    again = grads_of(model, out2 := model(batch))
    torch.testing.assert_close(out2["loss"], out["loss"], rtol=0, atol=0)
    assert plain.keys() == again.keys()
    for name in plain:
        torch.testing.assert_close(again[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_a_bfloat16_training_step_is_within_tolerance_of_float32():
    """bf16 weights, and float32 weights under bf16 autocast: the loss within 2 % of float32 and the gradient
    pointing the same way (cosine > 0.99). bf16 keeps 8 bits of mantissa: ~0.4 % per operation."""
    model = tiny_model().train()
    batch = mixed_batch(model)
    ref = model(batch)
    g32 = grads_of(model, ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = model(batch)
    g_auto = grads_of(model, auto)
    bf = tiny_model().train().to(torch.bfloat16)
    out_bf = bf(batch)
    g_bf = grads_of(bf, out_bf)
    for out in (auto, out_bf):
        assert out["loss"].dtype == torch.float32
        torch.testing.assert_close(out["loss"], ref["loss"], rtol=0.02, atol=0)
    for grads in (g_auto, g_bf):
        flat = torch.cat([grads[n].float().flatten() for n in g32])
        ref_flat = torch.cat([g32[n].flatten() for n in g32])
        assert torch.nn.functional.cosine_similarity(flat, ref_flat, dim=0) > 0.99


def test_packing_takes_the_config_and_says_so():
    model = tiny_model()
    seq = PackedSequence(SPECIAL)
    with pytest.raises(TypeError, match=r"model\.config"):
        seq.add_sample([Text([5])], model, random.Random(0))
    with pytest.raises(ValueError, match="empty"):
        PackedSequence(SPECIAL).batch()


def test_forward_equals_the_official_training_forward():
    """``tests/golden_training``: the official ``Bagel.forward`` (commit in its README) on one packed batch of a
    text-to-image, an understanding and an edit sample, run on the golden tiny checkpoint. Our forward, given the
    same batch (and the noise and times the official forward drew), gives the same per-token losses and their
    means. Tolerance (the README's): per token 1e-4, reduced 1e-5 — a float64 run of the official forward moved
    its reduced loss by 6.5e-7."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    from bagel_lite.loading.checkpoint import load_bagel
    from bagel_lite.model.batch import PackedBatch

    folder = Path(__file__).parent / "golden_training"
    t, meta = load_file(folder / "batch.safetensors"), json.loads((folder / "batch.json").read_text())
    want = json.loads((folder / "losses.json").read_text())
    model = load_bagel(Path(__file__).parent / "golden" / "tiny_ckpt").model
    batch = PackedBatch(
        sequence_length=meta["sequence_length"], sample_lens=meta["sample_lens"], split_lens=meta["split_lens"],
        attn_modes=meta["attn_modes"], vit_token_seqlens=meta["vit_token_seqlens"],
        packed_noise=t["noise"], packed_timesteps=t["timesteps_t"],
        **{k: t[k] for k in ("packed_position_ids", "packed_text_ids", "packed_text_indexes", "packed_vit_tokens",
                             "packed_vit_position_ids", "packed_vit_token_indexes", "packed_latent_clean",
                             "packed_latent_position_ids", "packed_vae_token_indexes", "mse_loss_indexes",
                             "ce_loss_indexes", "packed_label_ids")})
    with torch.no_grad():
        out = model(batch)
        # per token, through the same ways out
        captured = {}
        real_logits, real_velocity = model.logits, model.velocity
        model.logits = lambda h: captured.setdefault("logits", real_logits(h))
        model.velocity = lambda h: captured.setdefault("velocity", real_velocity(h))
        model(batch)
    ce = torch.nn.functional.cross_entropy(captured["logits"], batch.packed_label_ids, reduction="none")
    target = (batch.packed_noise - batch.packed_latent_clean)[batch.packed_timesteps > 0]
    mse = ((captured["velocity"] - target) ** 2).mean(-1)
    torch.testing.assert_close(ce, torch.tensor(want["ce_per_token"]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mse, torch.tensor(want["mse_per_token"]), atol=1e-4, rtol=1e-4)
    assert abs(out["ce"].item() - want["reduced"]["ce"]) < 1e-5
    assert abs(out["mse"].item() - want["reduced"]["mse"]) < 1e-5
    assert abs(out["loss"].item() - want["reduced"]["total"]) < 1e-5


def test_a_dense_model_sends_every_token_through_one_expert(tmp_path):
    """``BagelConfig(mot=False)``: the baseline of workbook 05. The generation expert gets no gradient, and the
    setting survives saving and loading (``bagel_config.json``)."""
    from dataclasses import replace

    from bagel_lite.loading.checkpoint import load_bagel, save_bagel

    mot = tiny_model()
    torch.manual_seed(0)
    dense = build(replace(config.tiny(), mot=False))[0]
    dense.load_state_dict(mot.state_dict())
    batch = mixed_batch(mot)
    g_mot, g_dense = grads_of(mot, mot(batch)), grads_of(dense, dense(batch))
    assert any("_moe_gen" in n for n in g_mot) and not any("_moe_gen" in n for n in g_dense)
    assert not torch.equal(mot(batch)["mse"], dense(batch)["mse"])
    golden = load_bagel(__import__("pathlib").Path(__file__).parent / "golden" / "tiny_ckpt")
    save_bagel(tmp_path / "dense", dense, golden.ae, golden.tokenizer)
    assert load_bagel(tmp_path / "dense").config.mot is False
