"""The playground: BAGEL's knobs as widgets, for classroom demos.

    from bagel_lite.ui import Playground
    Playground.micro()                       # micro-BAGEL on the CPU (default)
    Playground.from_folder("BAGEL-7B-MoT")   # the full model on GPUs (bf16, split across all visible GPUs)

Four tabs — text-to-image, editing, understanding, chat — with the official defaults of each. While an
image is drawn the Generate button is disabled, a progress bar advances, a preview shows the decoded estimate
of the clean image every few steps, and Stop ends the run cleanly between two steps. Every result shows its
seed and settings and the one-line Python call that reproduces it.

Generation runs in a worker thread so that the kernel can still hear the Stop button. Tests call the
``*_clicked(wait=True)`` handlers directly and read ``last_result`` / ``message``.
"""

from __future__ import annotations

import html
import threading

import torch
from PIL import Image

from ..inference.pipeline import Generated, Pipeline
from ..inference.progress import GenerationStopped
from ..inference.settings import EDIT_SETTINGS, T2I_SETTINGS
from ..loading.transforms import pil_img2rgb, read_image
from .controls import RATIOS, SamplerControls, image_shape_for, to_png

LABELS = {
    "en": {"t2i": "Text to image", "edit": "Edit", "und": "Understand", "chat": "Chat", "prompt": "Prompt",
           "instruction": "Instruction", "question": "Question", "generate": "Generate", "stop": "Stop",
           "answer": "Answer", "send": "Send", "reply_image": "reply with an image", "use_last": "use last image",
           "think": "think first", "seed": "seed", "size": "size", "upload": "image", "reset": "new chat",
           "sample": "sample text", "temperature": "temperature", "max_think": "max think tokens",
           "max_tokens": "max tokens", "und_note": "asks about the image shown here", "message": "type a message",
           "stopped": "stopped at {unit} {step}", "step": "step", "token": "token"},
    "zh": {"t2i": "文生图", "edit": "图像编辑", "und": "图像理解", "chat": "对话", "prompt": "提示词",
           "instruction": "编辑指令", "question": "问题", "generate": "生成", "stop": "停止", "answer": "回答",
           "send": "发送", "reply_image": "以图像回复", "use_last": "使用上一张图", "think": "先思考",
           "seed": "随机种子", "size": "尺寸", "upload": "图像", "reset": "新对话", "sample": "采样文本",
           "temperature": "温度", "max_think": "最大思考长度", "max_tokens": "最大长度",
           "und_note": "针对此处显示的图像提问", "message": "输入消息", "stopped": "已在第 {step} {unit}停止",
           "step": "步", "token": "个词元"},
}


class Playground:
    def __init__(self, pipe: Pipeline, backend: str = "micro-BAGEL (CPU)", preview_every: int = 5,
                 language: str = "en"):
        import ipywidgets as w

        self.pipe, self.backend, self.preview_every = pipe, backend, preview_every
        self.lang = language
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_result: Generated | str | None = None
        self.last_answer: str | None = None
        self.message = ""
        cfg = pipe.model.config
        self.side = min(1024, cfg.max_latent_size * cfg.latent_downsample)
        self.step = cfg.latent_downsample
        self._build_shared(language)
        tabs = [self._build_t2i(), self._build_edit(), self._build_und(), self._build_chat()]
        self.reset_chat()
        # class names the browser test (tests/test_browser.py) uses to find the widgets
        for widget, name in ((self.t2i_prompt, "bagel-prompt"), (self.t2i_button, "bagel-generate"),
                             (self.result, "bagel-result"), (self.preview, "bagel-preview"), (self.seed, "bagel-seed"),
                             (self.info, "bagel-info"), (self.stop_button, "bagel-stop")):
            widget.add_class(name)
        self.tabs = w.Tab(children=tabs)
        self.buttons = [self.t2i_button, self.edit_button, self.und_button, self.chat_send]
        self.widget = w.VBox([
            w.HBox([w.HTML(f"<b>bagel-lite playground</b> &middot; {backend}"), self.language]),
            self.tabs,
            w.HBox([self.progress, self.stop_button]),
            w.HBox([self.preview, self.result]),
            self.info,
        ])
        self.set_language(language)

    STYLE, WIDE = {"description_width": "120px"}, "600px"

    def _build_shared(self, language: str):
        import ipywidgets as w

        style, layout = self.STYLE, w.Layout(width="360px")
        self.seed = w.IntText(value=0, description="seed", style=style, layout=layout)
        self.progress = w.IntProgress(value=0, min=0, max=1, layout=w.Layout(width="360px"))
        self.preview = w.Image(format="png", layout=w.Layout(width="192px", height="192px"))
        self.result = w.Image(format="png", layout=w.Layout(width="256px", height="256px"))
        self.info = w.HTML()
        self.stop_button = w.Button(description="Stop", button_style="danger", disabled=True)
        self.stop_button.on_click(lambda _: self.stop())
        self.language = w.ToggleButtons(options=[("English", "en"), ("中文", "zh")], value=language)
        self.language.observe(lambda ch: self.set_language(ch["new"]), names="value")

    def _build_t2i(self):
        import ipywidgets as w

        style, layout, wide = self.STYLE, w.Layout(width="360px"), w.Layout(width=self.WIDE)
        self.t2i_prompt = w.Textarea(value="a red circle on the left", layout=wide)
        self.t2i_sampler = SamplerControls(T2I_SETTINGS, style, layout)
        self.t2i_ratio = w.Dropdown(options=list(RATIOS), value="1:1", description="size", style=style, layout=layout)
        self.t2i_think = w.Checkbox(value=False, description="think first")
        self.max_think = w.IntSlider(value=1024, min=8, max=4096, step=8, description="max think tokens",
                                     style=style, layout=layout)
        self.t2i_button = w.Button(description="Generate", button_style="primary")
        self.t2i_button.on_click(lambda _: self.generate_clicked())
        return w.VBox([self.t2i_prompt, w.HBox([w.VBox(self.t2i_sampler.widgets[:4] + [self.t2i_ratio]),
                                               w.VBox(self.t2i_sampler.widgets[4:] + [self.seed, self.max_think])]),
                       w.HBox([self.t2i_think, self.t2i_button])])

    def _build_edit(self):
        import ipywidgets as w

        style, layout, wide = self.STYLE, w.Layout(width="360px"), w.Layout(width=self.WIDE)
        self.edit_upload = w.FileUpload(accept="image/*", multiple=False, description="image")
        self.edit_image: Image.Image | None = None
        self.edit_upload.observe(lambda ch: self._read_upload(self.edit_upload, self.set_edit_image), names="value")
        self.edit_use_last = w.Button(description="use last image")
        self.edit_use_last.on_click(lambda _: self.use_last_image("edit"))
        self.edit_source = w.Image(format="png", layout=w.Layout(width="128px", height="128px"))
        self.edit_text = w.Textarea(value="make the circle blue", layout=wide)
        self.edit_sampler = SamplerControls(EDIT_SETTINGS, style, layout)
        self.edit_think = w.Checkbox(value=False, description="think first")
        self.edit_button = w.Button(description="Generate", button_style="primary")
        self.edit_button.on_click(lambda _: self.edit_clicked())
        return w.VBox([w.HBox([self.edit_upload, self.edit_use_last, self.edit_source]), self.edit_text,
                       w.HBox([w.VBox(self.edit_sampler.widgets[:4]), w.VBox(self.edit_sampler.widgets[4:])]),
                       w.HBox([self.edit_think, self.edit_button])])

    def _build_und(self):
        import ipywidgets as w

        style, layout, wide = self.STYLE, w.Layout(width="360px"), w.Layout(width=self.WIDE)
        self.und_upload = w.FileUpload(accept="image/*", multiple=False, description="image")
        self.und_image: Image.Image | None = None  # this tab's own picture, shown beside its upload
        self.und_upload.observe(lambda ch: self._read_upload(self.und_upload, self.set_und_image), names="value")
        self.und_use_last = w.Button(description="use last image")
        self.und_use_last.on_click(lambda _: self.use_last_image("und"))
        self.und_source = w.Image(format="png", layout=w.Layout(width="128px", height="128px"))
        self.und_question = w.Textarea(value="what color is the circle?", layout=wide)
        self.und_sample = w.Checkbox(value=False, description="sample text")
        self.und_temperature = w.FloatSlider(value=0.3, min=0.05, max=1.0, step=0.05, description="temperature",
                                             style=style, layout=layout)
        self.und_max = w.IntSlider(value=512, min=8, max=4096, step=8, description="max tokens", style=style,
                                   layout=layout)
        self.und_think = w.Checkbox(value=False, description="think first")
        self.und_button = w.Button(description="Answer", button_style="primary")
        self.und_button.on_click(lambda _: self.answer_clicked())
        self.und_answer = w.HTML()
        self.und_note = w.HTML()
        return w.VBox([w.HBox([self.und_upload, self.und_use_last, self.und_source, self.und_note]),
                       self.und_question, w.HBox([self.und_sample, self.und_temperature, self.und_max]),
                       w.HBox([self.und_think, self.und_button]), self.und_answer])

    def _build_chat(self):
        import ipywidgets as w

        wide = w.Layout(width=self.WIDE)
        self.chat_log = w.VBox([])
        self.chat_text = w.Text(value="", layout=wide)
        self.chat_image_reply = w.Checkbox(value=False, description="reply with an image")
        self.chat_attach = w.Checkbox(value=False, description="use last image")
        self.chat_send = w.Button(description="Send", button_style="primary")
        self.chat_send.on_click(lambda _: self.chat_clicked())
        self.chat_reset = w.Button(description="new chat")
        self.chat_reset.on_click(lambda _: self.reset_chat())
        return w.VBox([self.chat_log, self.chat_text,
                       w.HBox([self.chat_attach, self.chat_image_reply, self.chat_send, self.chat_reset])])

    # ------------------------------------------------------------------------------------------------------

    @classmethod
    def micro(cls, **kwargs) -> Playground:
        from .. import micro

        return cls(micro.load(), "micro-BAGEL (CPU)", **kwargs)

    @classmethod
    def from_folder(cls, folder, device: str | None = None, quantize: str | None = None, **kwargs) -> Playground:
        """The official BAGEL-7B-MoT folder: bf16, across every visible GPU ("auto") unless told otherwise;
        ``quantize="nf4"`` / ``"int8"`` through bitsandbytes when it is installed."""
        from ..inference.pipeline import load

        device = device or ("auto" if torch.cuda.device_count() > 1 else None)
        name = f"BAGEL ({folder}{', ' + quantize if quantize else ''})"
        return cls(load(folder, device=device, quantize=quantize), name, **kwargs)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def set_language(self, lang: str):
        t = LABELS[lang]
        self.lang = lang
        for i, key in enumerate(("t2i", "edit", "und", "chat")):
            self.tabs.set_title(i, t[key])
        self.t2i_button.description = self.edit_button.description = t["generate"]
        self.und_button.description, self.chat_send.description = t["answer"], t["send"]
        self.stop_button.description = t["stop"]
        for box in (self.t2i_think, self.edit_think, self.und_think):
            box.description = t["think"]
        self.chat_image_reply.description, self.chat_attach.description = t["reply_image"], t["use_last"]
        self.edit_use_last.description, self.chat_reset.description = t["use_last"], t["reset"]
        self.und_use_last.description, self.und_upload.description = t["use_last"], t["upload"]
        self.und_sample.description, self.und_temperature.description = t["sample"], t["temperature"]
        self.seed.description, self.t2i_ratio.description = t["seed"], t["size"]
        self.max_think.description, self.edit_upload.description = t["max_think"], t["upload"]
        self.und_max.description, self.und_note.value = t["max_tokens"], t["und_note"]
        self.t2i_prompt.placeholder, self.edit_text.placeholder = t["prompt"], t["instruction"]
        self.und_question.placeholder, self.chat_text.placeholder = t["question"], t["message"]

    # ------------------------------------------------------------------------------------------------------
    # Running work: in a thread (so Stop is heard), or inline when a test asks to wait.

    def _run(self, work, wait: bool):
        """Run ``work`` as a transaction: on an error, a Stop or an interrupt, every widget, the shown images
        and the conversation are put back as they were, and the message says what happened."""
        if self._thread is not None and self._thread.is_alive():
            self._say("busy: wait for the current run or press Stop", error=True)
            return

        def job():
            before = self._snapshot()
            for b in self.buttons:
                b.disabled = True
            self.stop_button.disabled = False
            self._stop.clear()
            try:
                work()
            except GenerationStopped as e:
                self._restore(before)
                t = LABELS[self.lang]
                self._say(t["stopped"].format(step=e.step, unit=t[e.unit]))
            except Exception as e:  # bad settings or input, or a failure: a message, never a silent thread
                self._restore(before)
                known = isinstance(e, (ValueError, TypeError))
                self._say(str(e) if known else f"{type(e).__name__}: {e}", error=True)
            except BaseException:  # KeyboardInterrupt: put everything back, then let it through
                self._restore(before)
                raise
            finally:
                for b in self.buttons:
                    b.disabled = False
                self.stop_button.disabled = True

        if wait:
            job()
        else:
            self._thread = threading.Thread(target=job, daemon=True)
            self._thread.start()

    def _snapshot(self) -> dict:
        """Everything a run may change, to put back if it fails."""
        state = {(w, name): getattr(w, name) for w, name in (
            (self.result, "value"), (self.preview, "value"), (self.progress, "max"), (self.progress, "value"),
            (self.chat_log, "children"), (self.chat_text, "value"), (self.chat_attach, "value"),
            (self.edit_source, "value"), (self.und_source, "value"), (self.und_answer, "value"),
            (self.info, "value"))}
        state.update({(self, name): getattr(self, name) for name in
                      ("last_result", "edit_image", "und_image", "last_answer", "message", "chat")})
        state[(self.chat, "state")] = self.chat.state
        return state

    def _restore(self, state: dict):
        for (owner, name), value in state.items():
            setattr(owner, name, value)

    def wait(self, timeout: float | None = None):
        if self._thread is not None:
            self._thread.join(timeout)

    def stop(self):
        """End the current run between two denoising steps (or two written tokens)."""
        self._stop.set()

    def _say(self, text: str, error: bool = False):
        self.message = text
        color = "#b00" if error else "#333"
        self.info.value = f"<div style='color:{color}'>{html.escape(text)}</div>"

    def _callback(self, num_steps: int, shape: tuple[int, int]):
        """The sampler callback of a run drawing at ``shape``: the bar, a preview every few steps, Stop."""
        self.progress.max, self.progress.value = num_steps, 0

        def callback(info):
            self.progress.value = info.step + 1
            if info.step % self.preview_every == 0:
                with torch.no_grad():
                    estimate = info.x_t - info.t * info.v  # the model's current guess of the clean latents
                    self.preview.value = to_png(self.pipe.engine.decode_image(estimate, shape), scale=2)
            return not self._stop.is_set()

        return callback

    def _show(self, out: Generated):
        self.last_result = out
        self.result.value = to_png(out.image, scale=max(1, 256 // max(out.image.size)))
        plan = f"<div><b>plan:</b> {out.text}</div>" if out.text else ""
        self.info.value = (f"{plan}<div>seed {out.seed} &middot; {out.settings}</div>"
                           f"<div>reproduce: <code>{out.call}</code></div>")
        self.message = out.call

    # ------------------------------------------------------------------------------------------------------
    # Handlers

    def _text_callback(self):
        return lambda info: not self._stop.is_set()  # Stop is heard between two written tokens

    def generate_clicked(self, wait: bool = False):
        def work():
            settings = self.t2i_sampler.values()
            shape = image_shape_for(self.t2i_ratio.value, self.side, self.step)
            out = self.pipe.generate(self.t2i_prompt.value, seed=self.seed.value, image_shape=shape,
                                     think=self.t2i_think.value, max_think_tokens=self.max_think.value,
                                     callback=self._callback(settings["num_timesteps"] - 1, shape),
                                     text_callback=self._text_callback(), progress=False, **settings)
            self._show(out)

        self._run(work, wait)

    def _read_upload(self, upload, set_image):
        """A new image from an upload widget into its tab; a file that is not a readable image changes nothing."""
        files = upload.value
        if not files:
            return
        first = files[0] if isinstance(files, (list, tuple)) else next(iter(files.values()))
        try:
            set_image(read_image(bytes(first["content"]), f"uploaded file {first.get('name', '')!r}"))
        except (ValueError, TypeError) as e:
            self._say(f"could not read the upload: {e}; the tab's image is unchanged", error=True)

    def set_edit_image(self, image: Image.Image):
        """The picture the Edit tab edits (shown on the tab)."""
        self.edit_image, self.edit_source.value = self._readable(image)

    def set_und_image(self, image: Image.Image):
        """The picture the Understand tab asks about (shown on the tab)."""
        self.und_image, self.und_source.value = self._readable(image)

    @staticmethod
    def _readable(image) -> tuple[Image.Image, bytes]:
        image = read_image(image)
        return image, to_png(pil_img2rgb(image))  # both made before anything changes: a failure changes nothing

    def use_last_image(self, tab: str = "edit"):
        """The last drawn picture becomes the ``tab``'s image ("edit" or "und")."""
        if not isinstance(self.last_result, Generated):
            self._say("no image yet: generate one first", error=True)
            return
        {"edit": self.set_edit_image, "und": self.set_und_image}[tab](self.last_result.image)

    def edit_clicked(self, wait: bool = False):
        def work():
            if self.edit_image is None:
                raise ValueError("no image to edit: upload one or press 'use last image'")
            settings = self.edit_sampler.values()
            shape = self.pipe.engine.image_shape(source=self.edit_image)  # the rule pipe.edit follows
            out = self.pipe.edit(self.edit_image, self.edit_text.value, seed=self.seed.value,
                                 think=self.edit_think.value, max_think_tokens=self.max_think.value,
                                 callback=self._callback(settings["num_timesteps"] - 1, shape),
                                 text_callback=self._text_callback(), progress=False, **settings)
            self._show(out)

        self._run(work, wait)

    def answer_clicked(self, wait: bool = False):
        def work():
            if self.und_image is None:
                raise ValueError("no image to ask about: upload one on this tab or press 'use last image'")
            question, think, sample = self.und_question.value, self.und_think.value, self.und_sample.value
            text = self.pipe.answer(self.und_image, question, think=think, max_tokens=self.und_max.value,
                                    do_sample=sample, temperature=self.und_temperature.value, seed=self.seed.value,
                                    callback=self._text_callback())
            self.last_answer = text
            self.und_answer.value = f"<b>{html.escape(text)}</b>"
            self._say(text.call)

        self._run(work, wait)

    # --- chat: one Conversation kept between turns; each turn all or nothing ---------------------------------

    def reset_chat(self):
        self.chat = self.pipe.chat()
        self.chat_log.children = []

    def _chat_line(self, role: str, content):
        import ipywidgets as w

        if isinstance(content, Image.Image):
            return w.Image(value=to_png(content, scale=max(1, 128 // max(content.size))), format="png")
        who = "you" if role == "user" else "BAGEL"
        return w.HTML(f"<b>{who}:</b> {html.escape(content)}")

    def chat_clicked(self, wait: bool = False):
        def work():
            attach = None
            if self.chat_attach.value:  # the last result, unless the conversation already holds it
                if not isinstance(self.last_result, Generated):
                    raise ValueError("no image yet to attach: generate one first")
                attach = self.last_result.image
            drawing = {}
            if self.chat_image_reply.value:
                settings = self.t2i_sampler.values()
                shape = image_shape_for(self.t2i_ratio.value, self.side, self.step)
                drawing = dict(image_shape=shape, callback=self._callback(settings["num_timesteps"] - 1, shape),
                               **settings)
            seen = len(self.chat.turns)
            reply = self.chat.send(self.chat_text.value, image=attach, reply_image=self.chat_image_reply.value,
                                   seed=self.seed.value, max_tokens=self.und_max.value,
                                   text_callback=self._text_callback(), **drawing)
            lines = [self._chat_line(turn.role, turn.content) for turn in self.chat.turns[seen:]]
            if reply.image is not None:
                self._show(Generated(reply.image, None, reply.seed, reply.settings, reply.call, reply.latents))
            else:
                self.last_answer = reply.text
                self._say(reply.call)
            self.chat_log.children = [*self.chat_log.children, *lines]
            self.chat_text.value = ""
            self.chat_attach.value = False  # attached once; tick again to attach a newer image

        self._run(work, wait)
