"""The controls every tab and explorer shares: the sampler sliders (defined once, with the official names),
the size ratios and showing an image as PNG."""

from __future__ import annotations

import io

from PIL import Image

from ..settings import SETTING_NAMES, ImageSettings

RATIOS = {"1:1": (1, 1), "4:3": (3, 4), "3:4": (4, 3), "16:9": (9, 16), "9:16": (16, 9)}  # (height, width) parts
# (minimum, maximum, step) of each slider, and what the label adds to the setting's name
RANGES = {"cfg_text_scale": (0, 8, 0.5), "cfg_img_scale": (0, 4, 0.25), "cfg_interval": (0, 1, 0.05),
          "timestep_shift": (0.5, 10, 0.5), "num_timesteps": (2, 100, 1), "cfg_renorm_min": (0, 1, 0.05)}
HINTS = {"cfg_text_scale": " (≤1: off)", "cfg_img_scale": " (≤1: off)", "cfg_interval": " (t range)",
         "timestep_shift": " (1: none)", "cfg_renorm_min": " (1: off)"}


def to_png(image: Image.Image, scale: int = 1) -> bytes:
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def image_shape_for(ratio: str, side: int, step: int) -> tuple[int, int]:
    """(height, width) of the ratio's image whose long side is ``side``, both multiples of ``step``."""
    h, w = RATIOS[ratio]
    long = max(h, w)
    return max(step, round(side * h / long / step) * step), max(step, round(side * w / long / step) * step)


class SamplerControls:
    """One slider (or menu) per sampler setting, named as the setting, starting at ``defaults``. A guidance
    scale's label says that a value <= 1 switches guidance off. ``values()`` is the keyword dict that
    ``Pipeline.generate`` / ``edit`` / ``Conversation.send`` take as it is."""

    def __init__(self, defaults: ImageSettings, style: dict, layout, num_timesteps: int | None = None):
        import ipywidgets as w

        def slider(name, kind=w.FloatSlider, value=None):
            lo, hi, step = RANGES[name]
            return kind(value=getattr(defaults, name) if value is None else value, min=lo, max=hi, step=step,
                        description=name + HINTS.get(name, ""), style=style, layout=layout)

        self.cfg_text = slider("cfg_text_scale")
        self.cfg_img = slider("cfg_img_scale")
        self.interval = slider("cfg_interval", w.FloatRangeSlider)
        self.shift = slider("timestep_shift")
        self.steps = slider("num_timesteps", w.IntSlider, num_timesteps)
        self.renorm = w.Dropdown(options=["global", "channel", "text_channel"], value=defaults.cfg_renorm_type,
                                 description="cfg_renorm_type", style=style, layout=layout)
        self.renorm_min = slider("cfg_renorm_min")
        self.widgets = [self.cfg_text, self.cfg_img, self.interval, self.shift, self.steps, self.renorm,
                        self.renorm_min]

    def values(self) -> dict:
        """The settings under their official names (``SETTING_NAMES``), in plain form."""
        values = {name: widget.value for name, widget in zip(SETTING_NAMES, self.widgets)}
        return {**values, "cfg_interval": tuple(values["cfg_interval"])}
