"""Image preprocessing: any PIL image -> an RGB tensor in [-1, 1] whose sides fit the model.

``pil_img2rgb`` flattens transparency onto white. ``ImageTransform`` resizes so that the long side is at most
``max_size``, the short side at least ``min_size`` (the min rule wins), both sides multiples of ``stride``,
and the area at most ``max_pixels``; then maps pixels p in [0, 255] to (p/255 - 0.5) / 0.5.

BAGEL uses two of them: ``ImageTransform(1024, 512, 16)`` for the VAE (16 px per latent token) and
``ImageTransform(980, 224, 14)`` for the ViT (14 px patches). At inference every input image is first resized
with the *VAE* rule, even when only the ViT will see it.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

MAX_PIXELS = 14 * 14 * 9 * 1024  # 1,806,336


def pil_img2rgb(image: Image.Image) -> Image.Image:
    """RGBA (or any image with a ``transparency`` entry) is composited on white; 16-bit grey (``I;16``) is scaled
    to 8 bits (v / 257, so a 16-bit copy of an 8-bit picture reads as that picture; the official code clips it to
    white instead); anything else -> RGB."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL.Image, got {type(image).__name__}; open files with PIL.Image.open")
    if image.mode == "RGBA" or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.split()[3])
        return white
    if image.mode.startswith("I;16"):  # 16-bit grey (a 16-bit PNG): 0..65535 onto 0..255, as its 8-bit twin
        grey = np.asarray(image, dtype=np.float64)  # (H, W)
        return Image.fromarray(np.round(grey / 257.0).astype(np.uint8), "L").convert("RGB")
    if image.mode.startswith("I") or image.mode == "F":
        warnings.warn(
            f"image mode {image.mode!r}: converting to RGB clips values above 255 (as the official code does); "
            "for 16-bit or float data, scale to 8 bits first, e.g. Image.fromarray((arr / arr.max() * 255)"
            ".astype('uint8'))",
            stacklevel=2,
        )
    return image.convert("RGB")


def read_image(source, name: str = "image") -> Image.Image:
    """An input image from a PIL image, a path (``str`` or ``Path``) or the bytes of an image file, read in
    full now, so that a truncated, corrupt or oversized (decompression-bomb) file is refused here with a
    ``ValueError`` naming it, and anything else (an array, a tensor) with a ``TypeError`` saying what to pass."""
    if isinstance(source, Image.Image):
        image, label = source, f"the {name}"
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"{name} {str(source)!r} is not a file: pass a PIL image or the path of an image file")
        image, label = _open(path.read_bytes(), f"{name} file {str(source)!r}"), f"{name} file {str(source)!r}"
    elif isinstance(source, (bytes, bytearray, memoryview)):
        image, label = _open(bytes(source), f"the {name} bytes"), f"the {name} bytes"
    else:
        raise TypeError(f"{name} must be a PIL image, a path or the bytes of an image file, got "
                        f"{type(source).__name__} (for an array use PIL.Image.fromarray)")
    try:
        image.load()  # decodes the pixels: a truncated file fails here, not later inside the model
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"{label} could not be read as an image ({e})") from e
    return image


def _open(data: bytes, label: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # PIL's errors for bad files
        raise ValueError(f"{label} could not be read as an image ({e})") from e


def _fit(width: int, height: int, scale: float, stride: int) -> tuple[int, int]:
    def to_stride(x):  # nearest multiple of the stride (Python's round: ties to even), at least one stride
        return max(stride, int(round(x / stride) * stride))

    return to_stride(round(width * scale)), to_stride(round(height * scale))


def resized_size(width: int, height: int, max_size: int, min_size: int, stride: int, *,
                 max_pixels: int = MAX_PIXELS, img_num: int = 1) -> tuple[int, int]:
    """The (width, height) the official resize rule picks for an image of ``width`` x ``height``."""
    scale = min(max_size / max(width, height), 1.0)
    scale = max(scale, min_size / min(width, height))  # the min-side rule wins over the max-side rule
    w, h = _fit(width, height, scale, stride)
    if w * h > max_pixels / img_num:  # too many pixels: scale by the *area* ratio (as the official code)
        w, h = _fit(w, h, max_pixels / img_num / (w * h), stride)
    if max(w, h) > max_size:
        w, h = _fit(w, h, max_size / max(w, h), stride)
    return w, h


class ImageTransform:
    def __init__(self, max_size: int, min_size: int, stride: int, max_pixels: int = MAX_PIXELS):
        self.max_size, self.min_size, self.stride, self.max_pixels = max_size, min_size, stride, max_pixels

    def size_of(self, image: Image.Image, img_num: int = 1) -> tuple[int, int]:
        """The (height, width) ``resize`` gives ``image``, without resizing it."""
        w, h = resized_size(*image.size, self.max_size, self.min_size, self.stride, max_pixels=self.max_pixels,
                            img_num=img_num)
        return h, w

    def resize(self, image: Image.Image, img_num: int = 1) -> Image.Image:
        h, w = self.size_of(image, img_num)
        return image if (w, h) == image.size else image.resize((w, h), Image.BICUBIC)

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> (3, H, W) float32 in [-1, 1]."""
        arr = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy())  # (H, W, 3)
        return (arr.permute(2, 0, 1).float() / 255.0 - 0.5) / 0.5

    def __call__(self, image: Image.Image, img_num: int = 1) -> torch.Tensor:
        return self.to_tensor(self.resize(pil_img2rgb(image), img_num))


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) in about [-1, 1] -> PIL RGB, clamped and *truncated* to uint8 as the official code does."""
    x = ((image.detach().float().cpu() * 0.5 + 0.5).clamp(0, 1) * 255).permute(1, 2, 0)  # (H, W, 3)
    return Image.fromarray(x.to(torch.uint8).numpy())
