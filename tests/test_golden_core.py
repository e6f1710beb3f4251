"""Golden cases of the core components: the official implementation's numbers, reproduced.

Every size and setting comes from the golden folder's cases.json and configs, so the same tests run on
any golden set of the same layout (BAGEL_LITE_GOLDEN).
"""

from __future__ import annotations

import pytest
import torch
from helpers import GOLDEN, golden_cases, tolerance
from PIL import Image
from safetensors.torch import load_file

from bagel_lite.loading.transforms import ImageTransform
from bagel_lite.model.masks import sample_allowed
from bagel_lite.model.patchify import patchify, position_ids_extrapolate, position_ids_interpolate

CORE_CASES = ("patchify", "attention_mask", "vit_tower", "autoencoder")


def tensors(name):
    return load_file(GOLDEN / "cases" / f"{name}.safetensors")


def check_close(actual, expected, tol_text, what):
    atol, rtol = tolerance(tol_text)
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if atol == 0 and rtol == 0:
        assert torch.equal(actual, expected), f"{what}: not exactly equal"
    else:
        torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def input_image(cases, kind):
    t = cases["image_transforms"][kind]
    transform = ImageTransform(t["max_image_size"], t["min_image_size"], t["image_stride"])
    return transform(Image.open(GOLDEN / "images" / "input.png"))


def run_patchify(cases, case, bagel):
    p, ref = case["params"], tensors("patchify")
    image = input_image(cases, "vit")
    check_close(image, ref["image"], case["tolerance"], "preprocessed image")
    check_close(patchify(ref["image"], p["patch"]), ref["vit_patches"], case["tolerance"], "vit patches")
    h, w = ref["image"].shape[1:]
    check_close(position_ids_extrapolate(h, w, p["patch"], p["vit_max_per_side"]),
                ref["vit_pos_ids_extrapolate"], case["tolerance"], "vit ids (extrapolate)")
    check_close(position_ids_interpolate(h, w, p["patch"], p["vit_max_per_side"]),
                ref["vit_pos_ids_interpolate"], case["tolerance"], "vit ids (interpolate)")
    gh, gw = p["gen_hw"]
    check_close(position_ids_extrapolate(gh, gw, p["latent_downsample"], p["max_latent_size"]),
                ref["latent_pos_ids_extrapolate"], case["tolerance"], "latent ids")


def run_attention_mask(cases, case, bagel):
    p = case["params"]
    allowed = sample_allowed(p["split_lens"], p["attn_modes"])
    mask = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))  # the official additive form
    check_close(mask, tensors("attention_mask")["mask"], case["tolerance"], "mask")


def run_vit_tower(cases, case, bagel):
    ref = tensors("vit_tower")
    with torch.no_grad():
        vit_out = bagel.model.vit_model(ref["patches"], ref["position_ids"], [ref["patches"].shape[0]])
        llm_input = bagel.model.embed_vit(ref["patches"], ref["position_ids"], [ref["patches"].shape[0]])
    check_close(vit_out, ref["vit_out"], case["tolerance"], "vit_out")
    check_close(llm_input, ref["llm_input"], case["tolerance"], "llm_input")


def run_autoencoder(cases, case, bagel):
    ref = tensors("autoencoder")
    with torch.no_grad():
        latent = bagel.ae.encode(ref["image"])
        decoded = bagel.ae.decode(ref["latent"])
    check_close(latent, ref["latent"], case["tolerance"], "latent")
    check_close(decoded, ref["decoded"], case["tolerance"], "decoded")


RUNNERS = {name: globals()[f"run_{name}"] for name in CORE_CASES}


@pytest.mark.parametrize("name", [n for n in golden_cases()["cases"] if n in CORE_CASES],
                         ids=lambda n: f"golden-{n}")
def test_golden_case(name, golden, golden_bagel):
    RUNNERS[name](golden, golden["cases"][name], golden_bagel)


def test_golden_folder_has_the_core_cases(golden):
    assert set(CORE_CASES) <= set(golden["cases"]), "the golden folder lacks core cases"


def test_special_token_ids_match_the_golden(golden, golden_bagel):
    s = golden_bagel.special
    assert (s.bos, s.eos, s.start_of_image, s.end_of_image) == tuple(
        golden["special_token_ids"][k] for k in ("bos_token_id", "eos_token_id", "start_of_image", "end_of_image"))
    for case in golden["cases"].values():
        for prompt, ids in case.get("prompt_token_ids", {}).items():
            assert golden_bagel.tokenizer.encode(prompt) == ids
