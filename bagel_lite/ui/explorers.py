"""Explorers for the workbook: every sampler knob beside the picture it makes.

``SamplerExplorer(pipe)`` shows a prompt box, sliders for the flow-matching sampler and a strip of the
denoising trajectory: at chosen steps, the model's current estimate of the clean image,
``x0_hat = x_t - t * v`` (since ``x_t = (1 - t) x0 + t noise`` and ``v = noise - x0``), decoded.

The work is done by ``SamplerExplorer.run()``, which the button calls; tests call it directly (an exception
inside a widget callback is swallowed by the kernel, so driving only the widgets could hide a failure).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..inference.pipeline import Generated, Pipeline
from ..inference.settings import T2I_SETTINGS
from .controls import SamplerControls


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

    def __init__(self, pipe: Pipeline, prompt: str = "a red circle on the left", frames: int = 6,
                 image_shape: tuple[int, int] | None = None):
        """``image_shape`` (height, width): the picture's size (default: the pipeline's; BAGEL-7B-MoT: 1024²)."""
        import ipywidgets as w

        self.pipe, self.frames = pipe, frames
        self.image_shape = pipe.engine.image_shape(image_shape)
        style = {"description_width": "150px"}
        layout = w.Layout(width="380px")
        self.prompt = w.Text(value=prompt, description="prompt", style=style, layout=w.Layout(width="500px"))
        self.sampler = SamplerControls(T2I_SETTINGS, style, layout, num_timesteps=30)
        self.cfg_text, self.steps = self.sampler.cfg_text, self.sampler.steps  # the two knobs tried most
        self.seed = w.IntText(value=0, description="seed", style=style, layout=layout)
        self.button = w.Button(description="Draw", button_style="primary")
        self.output = w.Output()
        self.status = w.HTML()
        self.button.on_click(lambda _: self._on_click())
        knobs = [*self.sampler.widgets, self.seed]
        self.widget = w.VBox([self.prompt, w.HBox([w.VBox(knobs[:4]), w.VBox(knobs[4:])]),
                              w.HBox([self.button, self.status]), self.output])
        self.last: Generated | None = None
        self.trajectory: Trajectory | None = None

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def run(self) -> Generated:
        """Generate with the current widget values; returns the result and keeps the trajectory."""
        traj, callback = record_trajectory()
        self.last = self.pipe.generate(self.prompt.value, seed=self.seed.value, callback=callback, progress=False,
                                       image_shape=self.image_shape, **self.sampler.values())
        self.trajectory = traj
        return self.last

    def figure(self):
        """The final image and the decoded clean-image estimates along the trajectory."""
        from ..workbook.viz import show_images

        traj, shape = self.trajectory, self.image_shape
        picks = sorted({round(i * (len(traj.ts) - 1) / max(self.frames - 1, 1)) for i in range(self.frames)})
        with torch.no_grad():
            frames = [self.pipe.engine.decode_latents(traj.estimates[i], shape)[0] for i in picks]
        return show_images(frames + [self.last.image], [f"x0_hat at t={traj.ts[i]:.2f}" for i in picks] + ["final"],
                           size=1.7, suptitle=f"{self.prompt.value!r}: the clean image guessed at each step "
                                              "(flow time t: 1 = noise, 0 = image)")

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
