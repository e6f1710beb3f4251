"""Image preprocessing: the official resize rule and colour-mode handling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bagel_lite.loading.transforms import ImageTransform, pil_img2rgb, resized_size, tensor_to_pil

# (input W, H) -> VAE size -> ViT size applied to the VAE result: the spec's worked examples
WORKED = [
    ((1024, 1024), (1024, 1024), (980, 980)),
    ((1000, 1000), (992, 992), (980, 980)),
    ((1920, 1080), (1024, 576), (980, 546)),
    ((640, 480), (688, 512), (686, 518)),
    ((300, 200), (768, 512), (770, 518)),
    ((800, 1200), (688, 1024), (658, 980)),
    ((4000, 500), (1024, 128), (980, 126)),
]


@pytest.mark.parametrize("size,vae,vit", WORKED, ids=lambda v: "x".join(map(str, v)))
def test_resize_rule_worked_examples(size, vae, vit):
    assert resized_size(*size, 1024, 512, 16) == vae
    assert resized_size(*vae, 980, 224, 14) == vit


def test_rgba_goes_on_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    assert pil_img2rgb(image).getpixel((0, 0)) == (255, 255, 255)


def test_palette_with_transparency_goes_on_white():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([10, 20, 30] + [0] * 765)
    image.info["transparency"] = 0
    assert pil_img2rgb(image).getpixel((1, 1)) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "LA"])
def test_other_modes_become_rgb(mode):
    assert pil_img2rgb(Image.new(mode, (3, 2))).mode == "RGB"


def test_a_sixteen_bit_grey_image_reads_as_its_eight_bit_twin(tmp_path):
    """A 16-bit PNG of an 8-bit grey picture (each value v stored as 257 v, the full 16-bit range) gives the same
    RGB pixels as the 8-bit file: no clipping to white, no warning."""
    import warnings

    from bagel_lite.loading.transforms import read_image

    grey = np.random.default_rng(0).integers(0, 256, (12, 20)).astype(np.uint8)  # (H, W)
    Image.fromarray(grey, "L").save(tmp_path / "eight.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")
    sixteen = read_image(tmp_path / "sixteen.png")
    assert sixteen.mode == "I;16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgb = pil_img2rgb(sixteen)
    assert rgb.tobytes() == pil_img2rgb(read_image(tmp_path / "eight.png")).tobytes()


def test_32_bit_and_float_images_warn_about_clipping():
    with pytest.warns(UserWarning, match="clips values above 255"):
        assert pil_img2rgb(Image.new("I", (3, 2), 1000)).mode == "RGB"
    with pytest.warns(UserWarning, match="clips values above 255"):
        assert pil_img2rgb(Image.new("F", (3, 2), 1000.0)).mode == "RGB"


def test_not_an_image_is_named():
    with pytest.raises(TypeError, match="expected a PIL.Image"):
        pil_img2rgb(torch.zeros(3, 4, 4))


def test_transform_range_and_round_trip():
    image = Image.new("RGB", (32, 16), (0, 128, 255))
    x = ImageTransform(32, 16, 16)(image)
    assert x.shape == (3, 16, 32) and x.min() == -1 and x.max() == 1
    assert tensor_to_pil(x).getpixel((0, 0)) == (0, 128, 255)
