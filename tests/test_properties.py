"""Property-based tests (hypothesis): arbitrary settings and inputs get either a clear error of the documented
types (``ValueError``, ``TypeError``; ``CheckpointError`` for folders) raised by bagel_lite's own checks, or a
finite output. Never an exception from inside torch, PIL or the tokenizer."""

from __future__ import annotations

import json
import math
import shutil
import traceback

import pytest
import torch
from determinism import golden_pipe
from helpers import GOLDEN
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bagel_lite.inference.settings import ImageSettings
from bagel_lite.loading.checkpoint import CheckpointError, check_folder

BOUNDED = settings(max_examples=40, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture])

anything = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(allow_nan=True),
                     st.text(max_size=5), st.lists(st.floats(-2, 2), max_size=3), st.tuples(st.floats(), st.floats()))
numberish = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6), anything)


def raised_by_our_checks(error: BaseException) -> bool:
    """A documented error type, raised by a bagel_lite frame (not from inside torch or PIL)."""
    frame = traceback.extract_tb(error.__traceback__)[-1].filename
    return isinstance(error, (ValueError, TypeError)) and "bagel_lite" in frame


@pytest.fixture(scope="module")
def pipe():
    return golden_pipe()


sampler_values = st.fixed_dictionaries({}, optional={
    "cfg_text_scale": numberish, "cfg_img_scale": numberish, "timestep_shift": numberish,
    "cfg_renorm_min": numberish, "cfg_renorm_type": st.sampled_from(["global", "channel", "text_channel", "x", 1]),
    "cfg_interval": st.one_of(st.tuples(numberish, numberish), anything),
    "num_timesteps": st.one_of(st.integers(-3, 4), anything),
})


@BOUNDED
@given(values=sampler_values)
def test_image_settings_are_valid_or_refused_clearly(values):
    try:
        s = ImageSettings(**values)
    except (ValueError, TypeError) as e:
        assert raised_by_our_checks(e), e
        return
    assert all(math.isfinite(v) for v in (s.cfg_text_scale, s.cfg_img_scale, s.timestep_shift, *s.cfg_interval))


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=sampler_values, shape=st.one_of(st.sampled_from([(16, 16), (32, 48), (48, 16)]),
                                             anything.filter(lambda v: v is not None)),  # None: 1024 px, slow
       seed=st.one_of(st.integers(-5, 2**70), anything))
def test_generate_gives_a_finite_image_or_a_clear_error(pipe, values, shape, seed):
    if isinstance(values.get("num_timesteps"), int) and values["num_timesteps"] > 4:
        values["num_timesteps"] = 4  # bounded compute
    try:
        out = pipe.generate("a red circle", image_shape=shape, seed=seed, progress=False,
                            **{"num_timesteps": 3, **values})
    except (ValueError, TypeError) as e:
        assert raised_by_our_checks(e), e
        return
    assert bool(torch.isfinite(out.latents).all()) and out.image.size[::-1] == tuple(shape)


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.fixed_dictionaries({
    "cfg_text_scale": st.floats(0, 100), "cfg_img_scale": st.floats(0, 100), "timestep_shift": st.floats(0.05, 100),
    "cfg_renorm_min": st.floats(0, 1), "cfg_renorm_type": st.sampled_from(["global", "channel", "text_channel"]),
    "cfg_interval": st.tuples(st.floats(0, 1), st.floats(0, 1)).map(sorted).map(tuple),
    "num_timesteps": st.integers(2, 4)}), init_noise_scale=st.sampled_from([0.0, 1.0, 1e3]))
def test_every_allowed_setting_gives_a_finite_image(pipe, values, init_noise_scale):
    noise = init_noise_scale * torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
    out = pipe.generate("a red circle", image_shape=(16, 32), seed=0, init_noise=noise, progress=False, **values)
    assert bool(torch.isfinite(out.latents).all())


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(question=st.one_of(st.text(max_size=12), anything), do_sample=st.one_of(st.booleans(), anything),
       temperature=numberish, max_tokens=st.one_of(st.integers(-2, 4), anything))
def test_answer_gives_text_or_a_clear_error(pipe, question, do_sample, temperature, max_tokens):
    try:
        text = pipe.answer(None, question, do_sample=do_sample, temperature=temperature, max_tokens=max_tokens,
                           seed=0)
    except (ValueError, TypeError) as e:
        assert raised_by_our_checks(e), e
        return
    assert isinstance(text, str)


@BOUNDED
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_as_an_image(pipe, data):
    from bagel_lite.loading.transforms import read_image

    try:
        image = read_image(data)
    except ValueError as e:
        assert raised_by_our_checks(e), e
        return
    assert isinstance(image, Image.Image)


json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(),
                                     st.text(max_size=4)),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                        max_size=3), max_leaves=5)
config_fields = [("llm_config.json", k) for k in ("hidden_size", "num_attention_heads", "num_key_value_heads",
                                                  "vocab_size", "rope_theta", "max_position_embeddings")] + \
                [("vit_config.json", k) for k in ("hidden_size", "patch_size", "num_hidden_layers", "image_size")] + \
                [("ae_config.json", k) for k in ("ch", "ch_mult", "scale_factor", "z_channels", "downsample")]


@BOUNDED
@given(field=st.sampled_from(config_fields), value=json_values)
def test_any_config_value_loads_or_raises_a_checkpoint_error(tmp_path_factory, field, value):
    folder = tmp_path_factory.mktemp("ckpt")
    for name in ("llm_config.json", "vit_config.json", "ae_config.json", "ema.safetensors", "ae.safetensors",
                 "vocab.json", "merges.txt"):
        (folder / name).symlink_to(GOLDEN / "tiny_ckpt" / name) if name.endswith("safetensors") else \
            shutil.copy(GOLDEN / "tiny_ckpt" / name, folder / name)
    file, key = field
    data = json.loads((folder / file).read_text())
    (folder / file).write_text(json.dumps({**data, key: value}))
    try:
        check_folder(folder)
    except CheckpointError as e:
        assert file in str(e) or "ema.safetensors" in str(e) or "ae.safetensors" in str(e), e
