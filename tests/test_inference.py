"""Inference behaviour beyond the golden numbers: CFG batching, seeds, the KV cache, callbacks, bad input."""

from __future__ import annotations

import pytest
import torch
from helpers import GOLDEN
from PIL import Image

from bagel_lite.inference.contexts import Context
from bagel_lite.inference.pipeline import Pipeline
from bagel_lite.inference.progress import GenerationStopped
from bagel_lite.inference.settings import ImageSettings
from bagel_lite.loading.transforms import ImageTransform
from bagel_lite.model.masks import causal_allowed

FAST = dict(num_timesteps=4, progress=False)


@pytest.fixture(scope="module")
def pipe(golden_bagel):
    b = golden_bagel
    # small transforms keep the tiny model fast: images become 64..128 px
    return Pipeline(b.model, b.ae, b.tokenizer, b.special, vae_transform=ImageTransform(128, 64, 16),
                    vit_transform=ImageTransform(128, 56, 14))


@pytest.fixture(scope="module")
def picture():
    return Image.open(GOLDEN / "images" / "input.png")


def test_batched_and_sequential_cfg_agree(pipe, picture):
    for run in (lambda **k: pipe.generate("a red circle", image_shape=(32, 48), seed=3, **FAST, **k),
                lambda **k: pipe.edit(picture, "make it blue", seed=3, **FAST, **k)):
        batched, sequential = run(batch_cfg=True), run(batch_cfg=False)
        torch.testing.assert_close(batched.latents, sequential.latents, atol=1e-4, rtol=1e-4)


def test_same_seed_same_image_other_seed_other_image(pipe):
    a = pipe.generate("a blue square", image_shape=(32, 32), seed=7, **FAST)
    b = pipe.generate("a blue square", image_shape=(32, 32), seed=7, **FAST)
    c = pipe.generate("a blue square", image_shape=(32, 32), seed=8, **FAST)
    assert torch.equal(a.latents, b.latents) and a.image.tobytes() == b.image.tobytes()
    assert not torch.equal(a.latents, c.latents)
    assert a.seed == 7 and "seed=7" in a.call


def test_reproduce_call_gives_the_same_image(pipe):
    first = pipe.generate("a green triangle", image_shape=(32, 32), cfg_text_scale=6.0, **FAST)
    assert "cfg_text_scale=6.0" in first.call and "num_timesteps=4" in first.call
    again = eval(first.call, {"pipe": pipe})
    assert again.image.tobytes() == first.image.tobytes()


def test_init_noise_is_used(pipe):
    noise = torch.randn(4, 64)
    a = pipe.generate("x", image_shape=(32, 32), init_noise=noise, seed=1, **FAST)
    b = pipe.generate("x", image_shape=(32, 32), init_noise=noise, seed=2, **FAST)
    assert torch.equal(a.latents, b.latents)


def test_cache_matches_one_long_pass(pipe):
    """Appending two segments through the cache equals attending over both at once."""
    with torch.no_grad():
        ctx = pipe.engine.read(Context(), "a red")
        ids_b = torch.tensor(pipe.tokenizer.encode(" circle"))
        rows_b = pipe.model.embed_text(ids_b)
        reader = pipe.engine.reader
        hidden_cached, _ = reader.forward_rows(ctx, rows_b, ctx.rope + torch.arange(len(ids_b)), None, causal=True)
        all_ids = torch.tensor([pipe.special.bos, *pipe.tokenizer.encode("a red"), pipe.special.eos, *ids_b.tolist()])
        hidden_full, _ = reader.forward_rows(Context(), pipe.model.embed_text(all_ids), torch.arange(len(all_ids)),
                                             None, causal=True)
    torch.testing.assert_close(hidden_cached, hidden_full[-len(ids_b):], atol=1e-5, rtol=1e-5)


def test_bottom_right_causal_mask_sees_the_cache():
    allowed = causal_allowed(3, 2)[0, 0]
    assert allowed.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]


def test_image_block_shares_one_position_and_text_counts_up(pipe, picture):
    with torch.no_grad():
        ctx = pipe.engine.read(Context(), pipe.vae_transform.resize(picture))
        assert ctx.rope == 2  # VAE block at 0, ViT block at 1
        after = pipe.engine.read(ctx, "hi")
    assert after.rope == 2 + len(pipe.tokenizer.encode("hi")) + 2
    assert after.kv_len == ctx.kv_len + len(pipe.tokenizer.encode("hi")) + 2


def test_callback_sees_every_step_and_can_stop(pipe):
    seen = []
    pipe.generate("x", image_shape=(32, 32), seed=0, callback=seen.append, num_timesteps=10, progress=False)
    assert [s.step for s in seen] == list(range(9)) and seen[0].t == 1.0 and seen[-1].t < 0.4
    assert seen[0].v_text_uncond is not None and seen[-1].v_text_uncond is None  # cfg interval (0.4, 1]
    with pytest.raises(GenerationStopped, match="step 1"):
        pipe.generate("x", image_shape=(32, 32), seed=0, callback=lambda s: s.step < 1, **FAST)


def test_text_sampling_is_seeded(pipe, picture):
    a = pipe.answer(picture, "what?", do_sample=True, temperature=1.0, seed=5, max_tokens=6)
    b = pipe.answer(picture, "what?", do_sample=True, temperature=1.0, seed=5, max_tokens=6)
    assert a == b


# --- bad input: each names the argument -------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(num_timesteps=1), r"num_timesteps must be an integer in \[2, 1000\], got 1"),
    (dict(num_timesteps=0), r"num_timesteps must be an integer in \[2, 1000\], got 0"),
    (dict(cfg_text_scale=-1.0), r"cfg_text_scale must be a finite number in \[0.0, 100.0\].*got -1.0"),
    (dict(cfg_img_scale=-0.5), r"cfg_img_scale must be a finite number in \[0.0, 100.0\].*got -0.5"),
    (dict(cfg_interval=(0.5, 1.2)), "cfg_interval must be two numbers"),
    (dict(cfg_interval=(0.8, 0.2)), "cfg_interval must be two numbers"),
    (dict(cfg_renorm_type="local"), "cfg_renorm_type 'local' is unknown"),
    (dict(cfg_renorm_min=2.0), r"cfg_renorm_min must be a finite number in \[0.0, 1.0\]"),
    (dict(timestep_shift=0.0), r"timestep_shift must be a finite number in \[0.05, 100.0\]"),
])
def test_invalid_sampler_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ImageSettings(**kwargs)


def test_unknown_setting_name_is_rejected(pipe):
    with pytest.raises(TypeError, match="cfg_txt_scale"):
        pipe.generate("x", cfg_txt_scale=3.0)


@pytest.mark.parametrize("prompt", ["", "   "])
def test_empty_prompt(pipe, prompt, picture):
    with pytest.raises(ValueError, match="prompt is empty"):
        pipe.generate(prompt, image_shape=(32, 32), **FAST)
    with pytest.raises(ValueError, match="question is empty"):
        pipe.answer(picture, prompt)


def test_prompt_longer_than_the_positions(pipe):
    too_long = "a " * (pipe.model.config.llm.max_position_embeddings + 10)
    with pytest.raises(ValueError, match="beyond the model's 4096: shorten the prompt"):
        pipe.answer(None, too_long)


@pytest.mark.parametrize("shape", [(30, 32), (0, 32), (2048, 32)])
def test_bad_output_size(pipe, shape):
    with pytest.raises(ValueError, match="image_shape must be"):
        pipe.generate("x", image_shape=shape, **FAST)


def test_bad_init_noise_shape(pipe):
    with pytest.raises(ValueError, match=r"init_noise must have shape \(4, 64\)"):
        pipe.generate("x", image_shape=(32, 32), init_noise=torch.zeros(3, 64), **FAST)


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "CMYK", "LA"])
def test_image_modes_are_accepted(pipe, mode):
    image = Image.new(mode, (40, 30))
    assert isinstance(pipe.answer(image, "what?", max_tokens=2), str)


def test_a_sixteen_bit_image_is_answered_as_its_eight_bit_twin(pipe):
    """The same grey picture as 8 bits (value 100) and as 16 bits (100 * 257): the same answer, token for token;
    a 32-bit integer image still warns that converting it clips."""
    eight, sixteen = Image.new("L", (40, 30), 100), Image.new("I;16", (40, 30), 100 * 257)
    assert pipe.answer(sixteen, "what?", max_tokens=6) == pipe.answer(eight, "what?", max_tokens=6)
    with pytest.warns(UserWarning, match="clips values above 255"):
        pipe.answer(Image.new("I", (40, 30), 500), "what?", max_tokens=2)


def test_tiny_and_extreme_images_are_resized_like_the_official_code(pipe):
    # a 1x1 image and a 1000x10 strip are scaled up to the minimum side, as the official resize does
    assert isinstance(pipe.answer(Image.new("RGB", (1, 1)), "what?", max_tokens=2), str)
    assert isinstance(pipe.answer(Image.new("RGB", (1000, 10)), "what?", max_tokens=2), str)


def test_not_an_image(pipe):
    with pytest.raises(TypeError, match="must be a PIL image, a path or the bytes of an image file, got Tensor"):
        pipe.interleave([torch.zeros(3, 8, 8), "x"])


def test_sampling_needs_a_positive_temperature(pipe, picture):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        pipe.answer(picture, "what?", do_sample=True, temperature=0.0)
