"""Parity with the ecosystem: each part of bagel_lite against the transformers / diffusers implementation.

The golden tests compare against the official BAGEL code; these compare against the libraries most readers
already know. Each comparison builds the reference from a config object (never from the hub), fills *our*
model with small random weights, converts them by the mapping documented in one function per component, and
checks the outputs:

==============================  ==============================================  ===============================
ours                            reference                                       float32: measured / asserted
==============================  ==============================================  ===============================
``Bagel.hidden_states`` +       ``transformers.Qwen3ForCausalLM``,              logits 0 (bit-exact) / atol 1e-5;
``logits`` (understanding       ``attention_bias=True``; ``generate``           greedy ids identical
expert only),
``Engine.write``
``SiglipNaViT`` (NaViT)         ``transformers.SiglipVisionModel``              1e-6 / atol 1e-5
``AutoEncoder`` (FLUX)          ``diffusers.AutoencoderKL`` (FLUX config)      mean 8e-7 / atol 1e-5;
                                                                                image 6e-6 / atol 1e-4
``flow`` schedule + Euler step  ``diffusers.FlowMatchEulerDiscreteScheduler``  exact / exact
``load_tokenizer``              ``transformers.Qwen2Tokenizer`` (vocab+merges)  ids identical
==============================  ==============================================  ===============================

Measured on this project's CPU (torch 2.13, transformers 5.25, diffusers 0.42). A wrong mapping or formula
misses the tolerances by orders of magnitude: 1e-3 added to one element of one QK-norm weight moves the
logits by 1e-4; a wrong patch reshape, attention across packed images or swapped decoder levels give 0.1-2.
Norm weights and biases are randomised too (they start at ones and zeros), so a swapped norm would show.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from bagel_lite.inference.flow import euler_step, timestep_schedule
from bagel_lite.loading.tokenizer import BOS, EOS, VISION_END, VISION_START, load_tokenizer
from bagel_lite.model.autoencoder import AutoEncoder
from bagel_lite.model.bagel import Bagel
from bagel_lite.model.config import AEConfig, LLMConfig, ViTConfig, tiny
from bagel_lite.model.patchify import patchify, position_ids
from bagel_lite.model.siglip import SiglipNaViT

MICRO_CHECKPOINT = Path(__file__).resolve().parents[1] / "bagel_lite" / "micro" / "checkpoint"


def randomise_norms(module: nn.Module):
    """Norm weights 1 + N(0, 0.2) and biases N(0, 0.1), instead of ones and zeros: a swapped norm then shows."""
    for name, p in module.named_parameters():
        if re.search(r"norm", name):
            with torch.no_grad():
                p.copy_(1 + 0.2 * torch.randn_like(p) if name.endswith("weight") else 0.1 * torch.randn_like(p))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ----------------------------------------------------------------------------------------------------------
# 1. The LLM path against transformers' Qwen3 with attention biases.
#
# Qwen2 (BAGEL's base) has q/k/v biases but no QK-norm; Qwen3 has QK-norm but no biases by default. BAGEL
# has both, so the reference is Qwen3 with ``attention_bias=True``. Qwen3 applies its q_norm / k_norm per
# head (RMSNorm over head_dim) *before* RoPE — as BAGEL does (modeling_qwen3: ``q_norm(q_proj(x).view(...))``,
# then ``apply_rotary_pos_emb``). ``attention_bias=True`` also gives Qwen3 an o_proj bias, which BAGEL lacks:
# it is set to zero.

LLM = LLMConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=376, max_position_embeddings=256)


def qwen3_config(cfg: LLMConfig):
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim, hidden_act=cfg.hidden_act,
        max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta,  # transformers 5 turns it into rope_parameters
        attention_bias=True, tie_word_embeddings=False, use_sliding_window=False,
    )


def qwen3_state_dict(model: Bagel) -> dict[str, torch.Tensor]:
    """Our language model's understanding expert -> a ``Qwen3ForCausalLM`` state dict.

    Names are the same on both sides (ours mirror the checkpoint, which mirrors transformers' Qwen2):
        model.embed_tokens.weight, model.norm.weight, lm_head.weight
        model.layers.{i}.input_layernorm.weight, model.layers.{i}.post_attention_layernorm.weight
        model.layers.{i}.self_attn.{q,k,v}_proj.{weight,bias}, model.layers.{i}.self_attn.o_proj.weight
        model.layers.{i}.self_attn.{q,k}_norm.weight          (per-head RMSNorm, (head_dim,))
        model.layers.{i}.mlp.{gate,up,down}_proj.weight
    Dropped: every ``*_moe_gen`` key (the generation expert; with gen_mask None no token goes through it).
    Added:   model.layers.{i}.self_attn.o_proj.bias = 0   (Qwen3's attention_bias covers o_proj; BAGEL's does not)
    """
    state = {k: v for k, v in model.language_model.state_dict().items() if "_moe_gen" not in k}
    for i in range(model.config.llm.num_hidden_layers):
        state[f"model.layers.{i}.self_attn.o_proj.bias"] = torch.zeros(model.config.llm.hidden_size)
    return state


@pytest.fixture(scope="module")
def llm_pair():
    pytest.importorskip("transformers.models.qwen3", reason="transformers >= 4.51 has Qwen3 (QK-norm)")
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(0)
    ours = Bagel(replace(tiny(), llm=LLM)).eval()  # the tiny ViT and connector are built but unused here
    randomise_norms(ours.language_model)
    ref = Qwen3ForCausalLM(qwen3_config(LLM)).eval()
    ref.load_state_dict(qwen3_state_dict(ours), strict=True)
    return ours, ref


def test_llm_logits_match_qwen3(llm_pair):
    ours, ref = llm_pair
    ids = torch.randint(0, LLM.vocab_size, (2, 13))  # (B, L)
    causal = torch.ones(13, 13, dtype=torch.bool).tril()[None, None]  # (1, 1, L, L)
    with torch.no_grad():
        positions = torch.arange(13).expand(2, -1)
        hidden, _ = ours.hidden_states(ours.embed_text(ids), None, positions, causal)  # (B, L, D)
        ours_logits = ours.logits(hidden)  # (B, L, vocab)
        ref_logits = ref(input_ids=ids).logits
    # Measured: 0 (bit-exact) with transformers' default SDPA attention, 8e-7 with its eager attention.
    torch.testing.assert_close(ours_logits, ref_logits, atol=1e-5, rtol=0)


def test_llm_greedy_text_matches_qwen3_generate(llm_pair):
    """Our KV-cached engine (one token per forward) writes the same greedy ids as transformers' generate."""
    from bagel_lite.inference.contexts import Context
    from bagel_lite.inference.engine import Engine

    ours, ref = llm_pair
    tokenizer, special = load_tokenizer(MICRO_CHECKPOINT)
    engine = Engine(ours, None, tokenizer, special)
    prompt = "what color is the large circle on the left?"
    with torch.no_grad():
        ctx = engine.read(Context(), prompt)  # <|im_start|> prompt <|im_end|>, positions 0..n-1
        ids = engine.write(ctx, max_tokens=10).ids  # <|im_start|> + up to 9 new ids, without <|im_end|>
        # transformers: the same prompt ids, then <|im_start|> to start the answer, as the engine does.
        prompt_ids = [special.bos, *tokenizer.encode(prompt), special.eos, special.bos]
        out = ref.generate(torch.tensor([prompt_ids]), max_new_tokens=9, do_sample=False,
                           eos_token_id=special.eos, pad_token_id=special.eos)[0, len(prompt_ids):].tolist()
    ref_ids = [special.bos, *out[:out.index(special.eos)]] if special.eos in out else [special.bos, *out]
    assert len(ref_ids) > 3, "too few tokens to compare: change the prompt or seed"
    assert ids == ref_ids


# ----------------------------------------------------------------------------------------------------------
# 2. The ViT against transformers' SigLIP vision model.
#
# transformers runs one square image of ``image_size`` at a time, through a stride-p Conv2d; ours runs NaViT
# packs of patchified images through a Linear. With the table as wide as the image (image_size / patch_size
# patches per side), our extrapolated position ids ``row * side + col`` are exactly transformers' arange.

VIT = ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=14,
                image_size=56)


def siglip_config(cfg: ViTConfig):
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(
        hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_channels=cfg.num_channels, image_size=cfg.image_size, patch_size=cfg.patch_size,
        hidden_act=cfg.hidden_act, layer_norm_eps=cfg.layer_norm_eps,
        vision_use_head=False,  # BAGEL takes the patch tokens; no attention-pooling head
    )


def siglip_state_dict(model: SiglipNaViT) -> dict[str, torch.Tensor]:
    """Our ``SiglipNaViT.vision_model`` -> transformers' SigLIP vision transformer state dict.

    Same names everywhere (embeddings.position_embedding, encoder.layers.{i}.{layer_norm1,
    self_attn.{q,k,v,out}_proj, layer_norm2, mlp.fc1, mlp.fc2}, post_layernorm), except one reshape:
        embeddings.patch_embedding.weight  (D, p*p*C)  ->  (D, C, p, p)
    Our patch features run over (row p, column q, channel c), channel fastest (``patchify``), so the Linear's
    weight is the Conv2d's weight with its channel axis moved last: ``conv_w.permute(0, 2, 3, 1).flatten(1)``;
    here the inverse ``linear_w.unflatten(1, (p, p, C)).permute(0, 3, 1, 2)``. The bias is the same.
    """
    state = dict(model.vision_model.state_dict())
    key = "embeddings.patch_embedding.weight"
    p, c = VIT.patch_size, VIT.num_channels
    state[key] = state[key].unflatten(1, (p, p, c)).permute(0, 3, 1, 2).contiguous()  # (D, C, p, p)
    return state


def test_vit_matches_siglip():
    pytest.importorskip("transformers.models.siglip", reason="transformers' SigLIP is the reference")
    from transformers import SiglipVisionModel as HFSiglipVisionModel

    ours = SiglipNaViT(VIT).eval()
    randomise_norms(ours)
    ref = HFSiglipVisionModel(siglip_config(VIT)).eval()
    # transformers 4.x wraps the vision transformer as ``.vision_model``; 5.x holds its parts directly.
    getattr(ref, "vision_model", ref).load_state_dict(siglip_state_dict(ours), strict=True)

    images = torch.rand(2, 3, VIT.image_size, VIT.image_size) * 2 - 1  # (2, 3, 56, 56) in [-1, 1]
    side = VIT.num_patches_per_side
    patches = torch.cat([patchify(im, VIT.patch_size) for im in images])  # (2 * 16, 588): one NaViT pack
    ids = torch.cat([position_ids(VIT.image_size, VIT.image_size, VIT.patch_size, side)] * 2)  # (32,)
    with torch.no_grad():
        packed = ours(patches, ids, [side * side] * 2)  # (32, hidden): attention stays inside each image
        expected = ref(pixel_values=images).last_hidden_state  # (2, 16, hidden), after post_layernorm
    # Measured: at most 1e-6 (outputs of size ~3).
    torch.testing.assert_close(packed, expected.flatten(0, 1), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------------
# 3. The autoencoder against diffusers' AutoencoderKL in the FLUX configuration.
#
# FLUX's autoencoder is diffusers' AutoencoderKL with 16 latent channels, no quant_conv / post_quant_conv,
# and a scaling *and* shift factor. diffusers' Flux pipeline applies them outside the VAE:
# ``(mean - shift) * scale`` after encoding, ``z / scale + shift`` before decoding; ours does it inside.

AE = AEConfig(ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1)


def flux_vae_config(cfg: AEConfig) -> dict:
    levels = len(cfg.ch_mult)
    return dict(
        in_channels=cfg.in_channels, out_channels=cfg.out_ch, latent_channels=cfg.z_channels,
        down_block_types=["DownEncoderBlock2D"] * levels, up_block_types=["UpDecoderBlock2D"] * levels,
        block_out_channels=[cfg.ch * m for m in cfg.ch_mult], layers_per_block=cfg.num_res_blocks,
        norm_num_groups=32, use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=True,
        scaling_factor=cfg.scale_factor, shift_factor=cfg.shift_factor,
    )


def diffusers_vae_state_dict(model: AutoEncoder) -> dict[str, torch.Tensor]:
    """Our FLUX-layout ``AutoEncoder`` -> diffusers' ``AutoencoderKL`` state dict.

        {en,de}coder.conv_in / conv_out                 -> the same
        {en,de}coder.norm_out                           -> {en,de}coder.conv_norm_out
        encoder.down.{i}.block.{j}                      -> encoder.down_blocks.{i}.resnets.{j}
        encoder.down.{i}.downsample.conv                -> encoder.down_blocks.{i}.downsamplers.0.conv
        decoder.up.{i}.block.{j}                        -> decoder.up_blocks.{n-1-i}.resnets.{j}
        decoder.up.{i}.upsample.conv                    -> decoder.up_blocks.{n-1-i}.upsamplers.0.conv
            (FLUX numbers decoder levels from the highest resolution, diffusers in the order they run)
        *.nin_shortcut                                  -> *.conv_shortcut
        {en,de}coder.mid.block_1 / block_2              -> {en,de}coder.mid_block.resnets.0 / resnets.1
        {en,de}coder.mid.attn_1.norm                    -> {en,de}coder.mid_block.attentions.0.group_norm
        {en,de}coder.mid.attn_1.{q,k,v}                 -> {en,de}coder.mid_block.attentions.0.to_{q,k,v}
        {en,de}coder.mid.attn_1.proj_out                -> {en,de}coder.mid_block.attentions.0.to_out.0
            (1x1 Conv2d weights (C, C, 1, 1) become Linear weights (C, C))
    """
    n = len(model.config.ch_mult)
    renames = [
        (r"\.norm_out\.", ".conv_norm_out."),
        (r"\.down\.(\d+)\.block\.", r".down_blocks.\1.resnets."),
        (r"\.down\.(\d+)\.downsample\.", r".down_blocks.\1.downsamplers.0."),
        (r"\.up\.(\d+)\.block\.", lambda m: f".up_blocks.{n - 1 - int(m[1])}.resnets."),
        (r"\.up\.(\d+)\.upsample\.", lambda m: f".up_blocks.{n - 1 - int(m[1])}.upsamplers.0."),
        (r"\.nin_shortcut\.", ".conv_shortcut."),
        (r"\.mid\.block_(\d)\.", lambda m: f".mid_block.resnets.{int(m[1]) - 1}."),
        (r"\.mid\.attn_1\.norm\.", ".mid_block.attentions.0.group_norm."),
        (r"\.mid\.attn_1\.([qkv])\.", r".mid_block.attentions.0.to_\1."),
        (r"\.mid\.attn_1\.proj_out\.", ".mid_block.attentions.0.to_out.0."),
    ]
    state = {}
    for key, tensor in model.state_dict().items():
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        if ".attentions.0.to_" in key and tensor.ndim == 4:
            tensor = tensor[:, :, 0, 0]  # 1x1 conv -> linear
        state[key] = tensor
    return state


@pytest.fixture(scope="module")
def vae_pair():
    pytest.importorskip("diffusers", reason="diffusers (dev extra) is the reference for the autoencoder")
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    ours = AutoEncoder(AE).eval()
    randomise_norms(ours)
    ref = AutoencoderKL(**flux_vae_config(AE)).eval()
    ref.load_state_dict(diffusers_vae_state_dict(ours), strict=True)
    return ours, ref


def test_autoencoder_encode_matches_diffusers(vae_pair):
    ours, ref = vae_pair
    image = torch.rand(2, 3, 32, 48) * 2 - 1  # (B, 3, H, W) in [-1, 1]
    with torch.no_grad():
        z = ours.encode(image, sample=False)  # (B, 16, 4, 6), already scaled and shifted
        z_sampled = ours.encode(image, generator=torch.Generator().manual_seed(1))  # mean + std * noise
        posterior = ref.encode(image).latent_dist  # raw mean and std, (B, 16, 4, 6) each
    noise = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(1))  # the same draw
    scale, shift = ref.config.scaling_factor, ref.config.shift_factor
    # Measured: at most 8e-7, mean and sample alike.
    torch.testing.assert_close(z, (posterior.mean - shift) * scale, atol=1e-5, rtol=0)
    torch.testing.assert_close(z_sampled, (posterior.mean + posterior.std * noise - shift) * scale, atol=1e-5, rtol=0)


def test_autoencoder_decode_matches_diffusers(vae_pair):
    ours, ref = vae_pair
    z = torch.randn(2, AE.z_channels, 4, 6)  # scaled latents, as the LLM makes them
    with torch.no_grad():
        image = ours.decode(z)  # (B, 3, 32, 48)
        expected = ref.decode(z / ref.config.scaling_factor + ref.config.shift_factor).sample
    # Measured: at most 6e-6 (images of size ~2; the decoder is the deepest network here).
    torch.testing.assert_close(image, expected, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------------------------------------
# 4. The sampler against diffusers' flow-matching Euler scheduler.
#
# Time convention: diffusers' sigma *is* BAGEL's t. Both write x_t = (1 - t) x_0 + t * noise, walk t from 1
# (noise) down to 0 (image), and take a velocity v = noise - x_0; diffusers' step is
# ``x + (sigma_next - sigma) * v``, ours ``x - v * (t - t_next)``. Our schedule has the final t = 0 as its
# last grid point; diffusers is given the others and appends sigma = 0 itself. (Its ``timesteps`` are
# sigma * 1000, what a diffusers model is fed; BAGEL's time embedder is fed t itself.)


def test_flow_schedule_and_euler_steps_match_diffusers():
    diffusers = pytest.importorskip("diffusers", reason="diffusers (dev extra) is the reference for the sampler")

    num_timesteps, shift = 50, 3.0
    ts = timestep_schedule(num_timesteps, shift)  # (50,) from 1 to 0, shifted
    # Same sigmas: the shifted schedule, given with the scheduler's own shift off ...
    given = diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0)
    given.set_timesteps(sigmas=ts[:-1].tolist())
    assert torch.equal(given.sigmas, ts)
    # ... and the unshifted grid, shifted by the scheduler: its shift formula is ours.
    shifted = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    shifted.set_timesteps(sigmas=torch.linspace(1, 0, num_timesteps)[:-1].tolist())
    assert torch.equal(shifted.sigmas, ts)

    x = torch.randn(16, 64)  # (N, 64) latent tokens
    x_ref = x.clone()
    for k, timestep in enumerate(given.timesteps):
        v = torch.randn(16, 64)  # any velocity: the step is pure arithmetic
        x = euler_step(x, v, float(ts[k]), float(ts[k + 1]))
        x_ref = given.step(v, timestep, x_ref).prev_sample
        assert torch.equal(x, x_ref), f"step {k}: max diff {max_diff(x, x_ref):.2e}"


# ----------------------------------------------------------------------------------------------------------
# 5. The tokenizer against transformers' Qwen2 tokenizer built from vocab.json + merges.txt alone.
#
# bagel_lite.loading.tokenizer loads the checkpoint folder (tokenizer.json included) and adds the four BAGEL markers
# when missing. The reference ignores tokenizer.json and tokenizer_config.json: Qwen2's BPE rebuilt from the
# vocabulary and merges, with the four markers added in BAGEL's order, as the official data code does.

TEXTS = [
    "a red circle on the left",
    "What color is the large square? It's purple.",
    "  two  spaces,\ttabs\nand\r\nnew lines \n\n",
    "numbers 1234567 and 3.14, symbols #@!$%^&*() and ünïcödé, 你好, emoji 🙂",
    "don't we'll they've I'm she'd IT'S",
    f"{BOS}move the blue triangle to the right{EOS}",
    f"{VISION_START}{VISION_END}{BOS}{EOS}",
    f"text{VISION_START} around {VISION_END}markers {BOS}x{EOS}y",
    "",
]


def test_tokenizer_matches_qwen2_tokenizer(tmp_path):
    from transformers import Qwen2Tokenizer, Qwen2TokenizerFast

    ours, special = load_tokenizer(MICRO_CHECKPOINT)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(MICRO_CHECKPOINT / name, tmp_path / name)
    for cls in {Qwen2Tokenizer, Qwen2TokenizerFast}:  # one class in transformers 5, slow and fast in 4.x
        ref = cls.from_pretrained(str(tmp_path))
        ref.add_tokens([BOS, EOS, VISION_START, VISION_END])
        assert [special.bos, special.eos, special.start_of_image, special.end_of_image] == \
            ref.convert_tokens_to_ids([BOS, EOS, VISION_START, VISION_END])
        for text in TEXTS:
            assert ours.encode(text) == ref.encode(text), f"{cls.__name__}: {text!r}"
            assert ours.decode(ours.encode(text)) == text


def test_swish_is_fused_only_for_the_channels_last_layout():
    """``encode`` / ``decode`` run channels-last on the CPU and take ``F.silu``; the layout the micro trainer uses
    keeps ``x * sigmoid(x)`` bit for bit (the bits that trained the shipped micro autoencoder). Both are SiLU."""
    from bagel_lite.model.autoencoder import fast_layout, swish

    x = torch.randn(2, 8, 16, 16) * 4
    assert torch.equal(swish(x), x * torch.sigmoid(x))
    fused = swish(fast_layout(x))
    assert torch.equal(fused, torch.nn.functional.silu(fast_layout(x)))
    torch.testing.assert_close(fused, x * torch.sigmoid(x), atol=1e-6, rtol=1e-6)
