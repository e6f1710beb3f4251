"""Golden cases of interleaved inference: understanding, text-to-image, editing, think mode.

Each case is run through the public API with the prompts, images, sizes and settings of cases.json and
checked against the official outputs: text ids exactly, timesteps / velocities / latents / decoded images
within the stated tolerance, uint8 pixels within 1.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from helpers import GOLDEN, golden_cases, tolerance
from PIL import Image
from safetensors.torch import load_file

from bagel_lite.inference.pipeline import Pipeline
from bagel_lite.inference.settings import ImageSettings
from bagel_lite.loading.transforms import ImageTransform
from bagel_lite.model.patchify import unpatchify

CORE_CASES = ("patchify", "attention_mask", "vit_tower", "autoencoder")
SETTING_NAMES = ("cfg_text_scale", "cfg_img_scale", "cfg_interval", "cfg_renorm_min", "cfg_renorm_type",
                 "num_timesteps", "timestep_shift")


def golden_pipeline(golden, b) -> Pipeline:
    """A pipeline over the loaded golden checkpoint ``b`` with the golden image transforms."""
    t = golden["image_transforms"]
    keys = ("max_image_size", "min_image_size", "image_stride")
    return Pipeline(b.model, b.ae, b.tokenizer, b.special, vae_transform=ImageTransform(*(t["vae"][k] for k in keys)),
                    vit_transform=ImageTransform(*(t["vit"][k] for k in keys)))


@pytest.fixture(scope="module")
def pipe(golden, golden_bagel):
    return golden_pipeline(golden, golden_bagel)


def case_items(case):
    return [Image.open(GOLDEN / x) if x.startswith("images/") else x for x in case["inputs"]]


def run_case(pipe, case, ref):
    s = case["settings"]
    kwargs = dict(think=s.get("think", False), understanding_output=s.get("understanding_output", False),
                  do_sample=s.get("do_sample", False), progress=False)
    if "max_think_token_n" in s:
        kwargs["max_think_tokens"] = s["max_think_token_n"]
    steps = []
    if not kwargs["understanding_output"]:
        kwargs["settings"] = ImageSettings(**{k: s[k] for k in SETTING_NAMES if k in s})
        kwargs["init_noise"] = ref["init_noise"]
        kwargs["callback"] = steps.append
        if "image_shapes" in s:
            kwargs["image_shape"] = tuple(s["image_shapes"])
    return pipe.run(case_items(case), **kwargs), steps


@pytest.mark.parametrize("name", [n for n in golden_cases()["cases"] if n not in CORE_CASES],
                         ids=lambda n: f"golden-{n}")
def test_golden_case(name, golden, pipe):
    case = golden["cases"][name]
    ref = load_file(GOLDEN / "cases" / f"{name}.safetensors")
    atol, rtol = tolerance(case["tolerance"])
    result, steps = run_case(pipe, case, ref)

    if "text_ids" in ref:
        assert result.text_ids == ref["text_ids"].tolist(), "generated text ids differ"
        assert result.outputs[0] == case["text_output"], "decoded text differs"
    if "velocities" not in ref:
        return
    torch.testing.assert_close(torch.tensor([st.t for st in steps]), ref["timesteps"], atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.stack([st.v for st in steps]), ref["velocities"], atol=atol, rtol=rtol)
    _, _, lh, lw = ref["final_latent"].shape
    p = pipe.model.config.latent_patch_size
    latent = unpatchify(result.latents, lh // p, lw // p, p, pipe.model.config.latent_channels)[None]
    torch.testing.assert_close(latent, ref["final_latent"], atol=atol, rtol=rtol)
    with torch.no_grad():
        decoded = pipe.engine.decode_latents(result.latents, result.image_shape)
    torch.testing.assert_close(decoded, ref["decoded"], atol=atol, rtol=rtol)
    pixels = torch.from_numpy(np.array(result.outputs[-1])).int()
    diff = (pixels - ref["image_uint8"].int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01, "more than a few pixels differ"


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("cc") is None,
                    reason="torch.compile on the CPU needs a C compiler")
def test_compiled_mode_writes_the_golden_text(golden):
    """``Bagel.compile_decoder`` (the optional compiled mode) changes speed, not answers: the understanding cases
    come out with the official text ids. (Image cases compile another minute; the benchmark checks them.)"""
    from bagel_lite.loading.checkpoint import load_bagel

    b = load_bagel(GOLDEN / "tiny_ckpt")  # its own copy: compiling is in place
    b.model.compile_decoder()
    compiled = golden_pipeline(golden, b)
    names = [n for n, c in golden["cases"].items() if c.get("settings", {}).get("understanding_output")]
    assert names
    for name in names:
        ref = load_file(GOLDEN / "cases" / f"{name}.safetensors")
        result, _ = run_case(compiled, golden["cases"][name], ref)
        assert result.text_ids == ref["text_ids"].tolist(), name
