"""ipywidgets for the workbook: every sampler knob beside the picture it makes.

``SamplerExplorer(pipe)`` shows a prompt box, sliders for the flow-matching sampler and a strip of the
denoising trajectory: at chosen steps, the model's current estimate of the clean image,
``x0_hat = x_t - t * v`` (since ``x_t = (1 - t) x0 + t noise`` and ``v = noise - x0``), decoded.

The work is done by ``SamplerExplorer.run()``, which the button calls; tests call it directly (an exception
inside a widget callback is swallowed by the kernel, so driving only the widgets could hide a failure).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .inference import T2I_SETTINGS
from .pipeline import Generated, Pipeline


@dataclass
class Trajectory:
    ts: list[float]
    estimates: list[torch.Tensor]  # (N, 64) clean-image estimates x0_hat, one per step
    v_norms: list[float]  # norm of the guided velocity
    v_cond_norms: list[float]  # norm of the conditional velocity


def record_trajectory() -> tuple[Trajectory, callable]:
    """A Trajectory and the sampler callback that fills it."""
    traj = Trajectory([], [], [], [])

    def callback(info):
        traj.ts.append(info.t)
        traj.estimates.append((info.x_t - info.t * info.v).detach().clone())
        traj.v_norms.append(float(info.v.norm()))
        traj.v_cond_norms.append(float(info.v_cond.norm()))

    return traj, callback


class SamplerExplorer:
    """Text-to-image with every sampler knob as a widget, and the trajectory drawn after each run."""

    def __init__(self, pipe: Pipeline, prompt: str = "a red circle on the left", frames: int = 6):
        import ipywidgets as w

        self.pipe, self.frames = pipe, frames
        s = T2I_SETTINGS
        style = {"description_width": "150px"}
        layout = w.Layout(width="380px")
        self.prompt = w.Text(value=prompt, description="prompt", style=style, layout=w.Layout(width="500px"))
        self.cfg_text = w.FloatSlider(value=s.cfg_text_scale, min=0, max=8, step=0.5,
                                      description="cfg_text_scale (≤1: off)", style=style, layout=layout)
        self.cfg_img = w.FloatSlider(value=s.cfg_img_scale, min=0, max=4, step=0.25,
                                     description="cfg_img_scale (≤1: off)", style=style, layout=layout)
        self.interval = w.FloatRangeSlider(value=s.cfg_interval, min=0, max=1, step=0.05,
                                           description="cfg_interval (t range)", style=style, layout=layout)
        self.shift = w.FloatSlider(value=s.timestep_shift, min=0.5, max=6, step=0.5,
                                   description="timestep_shift (1: none)", style=style, layout=layout)
        self.steps = w.IntSlider(value=30, min=2, max=100, description="num_timesteps", style=style, layout=layout)
        self.renorm = w.Dropdown(options=["global", "channel", "text_channel"], value=s.cfg_renorm_type,
                                 description="cfg_renorm_type", style=style, layout=layout)
        self.renorm_min = w.FloatSlider(value=s.cfg_renorm_min, min=0, max=1, step=0.05,
                                        description="cfg_renorm_min (1: off)", style=style, layout=layout)
        self.seed = w.IntText(value=0, description="seed", style=style, layout=layout)
        self.button = w.Button(description="Draw", button_style="primary")
        self.output = w.Output()
        self.status = w.HTML()
        self.button.on_click(lambda _: self._on_click())
        knobs = [self.cfg_text, self.cfg_img, self.interval, self.shift, self.steps, self.renorm, self.renorm_min,
                 self.seed]
        self.widget = w.VBox([self.prompt, w.HBox([w.VBox(knobs[:4]), w.VBox(knobs[4:])]),
                              w.HBox([self.button, self.status]), self.output])
        self.last: Generated | None = None
        self.trajectory: Trajectory | None = None

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def settings(self) -> dict:
        return dict(cfg_text_scale=self.cfg_text.value, cfg_img_scale=self.cfg_img.value,
                    cfg_interval=tuple(self.interval.value), timestep_shift=self.shift.value,
                    num_timesteps=self.steps.value, cfg_renorm_type=self.renorm.value,
                    cfg_renorm_min=self.renorm_min.value)

    def run(self) -> Generated:
        """Generate with the current widget values; returns the result and keeps the trajectory."""
        traj, callback = record_trajectory()
        self.last = self.pipe.generate(self.prompt.value, seed=self.seed.value, callback=callback, progress=False,
                                       **self.settings())
        self.trajectory = traj
        return self.last

    def figure(self):
        """The final image and the decoded clean-image estimates along the trajectory."""
        from .viz import show_images

        traj, shape = self.trajectory, self.pipe.default_image_shape()
        picks = sorted({round(i * (len(traj.ts) - 1) / max(self.frames - 1, 1)) for i in range(self.frames)})
        with torch.no_grad():
            frames = [self.pipe.decode_latents(traj.estimates[i], shape)[0] for i in picks]
        return show_images(frames + [self.last.image], [f"x0_hat at t={traj.ts[i]:.2f}" for i in picks] + ["final"],
                           size=1.7)

    def _on_click(self):
        import matplotlib.pyplot as plt
        from IPython.display import display

        self.button.disabled = True
        self.status.value = "drawing ..."
        try:
            self.run()
            with self.output:
                self.output.clear_output(wait=True)
                fig = self.figure()
                display(fig)
                plt.close(fig)
            self.status.value = f"<code>{self.last.call}</code>"
        except Exception as e:  # a message, never a failure swallowed by the kernel
            import html

            text = str(e) if isinstance(e, (ValueError, TypeError)) else f"{type(e).__name__}: {e}"
            self.status.value = f"<span style='color:#b00'>{html.escape(text)}</span>"
        finally:
            self.button.disabled = False
