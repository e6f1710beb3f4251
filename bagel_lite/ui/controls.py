"""The controls every tab and explorer shares: the sampler sliders (defined once, with the official names),
the size ratios and showing an image as PNG."""

from __future__ import annotations

import io

from PIL import Image

from ..inference.settings import RENORM_TYPES, SETTING_NAMES, ImageSettings

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


def plain(value, step: float):
    """A slider's value as the setting takes it: a float rounded to the slider's step (0.5 + 0.5 + ... can give
    3.0000000000000004), a tuple for a range slider."""
    if isinstance(value, (tuple, list)):
        return tuple(plain(v, step) for v in value)
    if isinstance(value, float):
        decimals = len(repr(float(step)).split(".")[1].rstrip("0"))
        return round(round(value / step) * step, decimals)
    return value


class SamplerControls:
    """One slider (or menu) per sampler setting, named as the setting, starting at ``defaults``. A guidance
    scale's label says that a value <= 1 switches guidance off. ``values()`` is the keyword dict that
    ``Pipeline.generate`` / ``edit`` / ``Conversation.send`` take as it is, read back by name."""

    def __init__(self, defaults: ImageSettings, style: dict, layout, num_timesteps: int | None = None):
        import ipywidgets as w

        def slider(name, kind=w.FloatSlider, value=None):
            lo, hi, step = RANGES[name]
            return kind(value=getattr(defaults, name) if value is None else value, min=lo, max=hi, step=step,
                        description=name + HINTS.get(name, ""), style=style, layout=layout)

        self.by_name = {  # setting name -> its widget: the one map from sliders to settings
            "cfg_text_scale": slider("cfg_text_scale"),
            "cfg_img_scale": slider("cfg_img_scale"),
            "cfg_interval": slider("cfg_interval", w.FloatRangeSlider),
            "timestep_shift": slider("timestep_shift"),
            "num_timesteps": slider("num_timesteps", w.IntSlider, num_timesteps),
            "cfg_renorm_type": w.Dropdown(options=list(RENORM_TYPES), value=defaults.cfg_renorm_type,
                                          description="cfg_renorm_type", style=style, layout=layout),
            "cfg_renorm_min": slider("cfg_renorm_min"),
        }
        if set(self.by_name) != set(SETTING_NAMES):
            raise RuntimeError(f"the sampler controls {sorted(self.by_name)} do not match the settings "
                               f"{sorted(SETTING_NAMES)}: add a control for each setting")
        self.cfg_text, self.cfg_img = self.by_name["cfg_text_scale"], self.by_name["cfg_img_scale"]
        self.interval, self.shift = self.by_name["cfg_interval"], self.by_name["timestep_shift"]
        self.steps, self.renorm = self.by_name["num_timesteps"], self.by_name["cfg_renorm_type"]
        self.renorm_min = self.by_name["cfg_renorm_min"]
        self.widgets = [self.by_name[name] for name in SETTING_NAMES]  # shown in the settings' order

    def values(self) -> dict:
        """The settings under their official names (``SETTING_NAMES``), in plain form."""
        return {name: plain(widget.value, RANGES[name][2]) if name in RANGES else widget.value
                for name, widget in self.by_name.items()}
