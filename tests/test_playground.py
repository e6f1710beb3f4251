"""Playground handlers, driven headless: every tab produces output, Stop interrupts, bad settings show a
message, and the reproduce line really reproduces."""

from __future__ import annotations

import threading
from datetime import datetime

import pytest

from bagel_lite import micro
from bagel_lite.inference.pipeline import Generated
from bagel_lite.micro.world import Scene, render
from bagel_lite.ui import LABELS, Playground


@pytest.fixture(scope="module")
def pipe():
    return micro.load()


@pytest.fixture
def pg(pipe):
    p = Playground(pipe)
    for sampler in (p.t2i_sampler, p.edit_sampler):
        sampler.steps.value = 8  # fast
    return p


def test_text_to_image_tab(pg):
    pg.t2i_prompt.value = "a large red circle on the left"
    pg.generate_clicked(wait=True)
    out = pg.last_result
    assert isinstance(out, Generated) and out.image.size == (64, 64)
    assert pg.result.value and pg.preview.value, "the picture and the preview are shown"
    assert pg.progress.value == pg.progress.max == 7
    assert f"seed {out.seed}" in pg.info.value and "pipe.generate(" in pg.info.value


def test_reproduce_line_gives_the_same_image(pg, pipe):
    pg.seed.value = 11
    pg.generate_clicked(wait=True)
    again = eval(pg.last_result.call, {"pipe": pipe})
    assert again.image.tobytes() == pg.last_result.image.tobytes()


def test_edit_and_understand_tabs(pg):
    pg.set_edit_image(render(Scene("square", "green", "center", "large")))
    pg.edit_text.value = "make the square red"
    pg.edit_clicked(wait=True)
    assert isinstance(pg.last_result, Generated) and "pipe.edit(image" in pg.last_result.call
    pg.und_question.value = "what color is the square?"
    pg.answer_clicked(wait=True)  # the Understand tab has no picture of its own yet: it says so, never guesses
    assert "no image to ask about" in pg.message and pg.und_answer.value == ""
    pg.use_last_image("und")  # the edited picture, shown on the Understand tab
    assert pg.und_image is pg.last_result.image and pg.und_source.value
    pg.answer_clicked(wait=True)
    assert isinstance(pg.last_answer, str) and pg.last_answer in pg.und_answer.value


def test_a_float_slider_gives_the_setting_its_step_not_its_rounding_error(pg):
    """0.1 + 0.2 + 2.7 is 3.0000000000000004 in floats; the settings line and the reproducing call say 3.0."""
    pg.t2i_sampler.shift.value = 0.1 + 0.2 + 2.7
    assert pg.t2i_sampler.values()["timestep_shift"] == 3.0
    pg.t2i_sampler.shift.value = 0.5 + 0.5 + 0.5 + 0.5 + 0.5 + 0.5 + 0.5
    pg.t2i_sampler.cfg_text.value = 0.1 * 3 * 10  # 3.0000000000000004 as well
    pg.generate_clicked(wait=True)
    assert "0000000" not in pg.info.value and "timestep_shift=3.5" in pg.last_result.call


def test_sliders_are_read_back_by_setting_name(pg):
    from bagel_lite.inference.settings import SETTING_NAMES

    sampler = pg.t2i_sampler
    assert list(sampler.values()) == list(sampler.by_name) and set(sampler.by_name) == set(SETTING_NAMES)
    for name, widget in sampler.by_name.items():
        assert widget.description.startswith(name)  # each widget is labelled with the setting it sets


def test_chat_keeps_its_context_and_reuses_a_drawn_image(pg):
    pg.chat_image_reply.value = True
    pg.chat_text.value = "a large blue circle at the top"
    pg.chat_clicked(wait=True)
    kv_after_first = pg.chat.state.gen.kv_len
    assert kv_after_first > 0 and pg.chat.turns[-1].content is pg.last_result.image
    pg.chat_image_reply.value = False
    pg.chat_attach.value = True
    pg.chat_text.value = "what color is the circle?"
    pg.chat_clicked(wait=True)
    assert pg.chat.state.gen.kv_len > kv_after_first, "the context grows across turns"
    assert pg.chat.turns[-1].role == "model" and isinstance(pg.chat.turns[-1].content, str)
    # you, BAGEL's image, you, BAGEL's answer: the drawn image is already in the chat, so it is not attached again
    assert len(pg.chat_log.children) == len(pg.chat.turns) == 4
    assert not pg.chat_attach.value, "'use last image' attaches once"
    pg.reset_chat()
    assert pg.chat.state.gen.kv_len == 0 and pg.chat_log.children == ()


def test_stop_interrupts_a_run(pg):
    pg.t2i_sampler.steps.value = 100
    started = threading.Event()
    original = pg._callback

    def slow_callback(n, shape):
        inner = original(n, shape)

        def cb(info):
            started.set()
            return inner(info)
        return cb

    pg._callback = slow_callback
    pg.generate_clicked(wait=False)
    assert started.wait(30)
    pg.stop()
    pg.wait(60)
    assert "stopped at step" in pg.message
    assert not pg.t2i_button.disabled and pg.stop_button.disabled


def test_empty_prompt_shows_a_message_not_a_traceback(pg):
    pg.t2i_prompt.value = "  "
    pg.generate_clicked(wait=True)
    assert "prompt is empty" in pg.message and "color:#b00" in pg.info.value
    assert not pg.t2i_button.disabled


def test_invalid_sampler_settings_show_a_message(pg):
    values = pg.t2i_sampler.values()
    pg.t2i_sampler.values = lambda: {**values, "cfg_interval": (0.8, 0.2)}  # sliders cannot produce this; code can
    pg.generate_clicked(wait=True)
    assert "cfg_interval must be two numbers" in pg.message


def test_empty_chat_message_and_bad_upload(pg):
    pg.chat_text.value = ""
    pg.chat_clicked(wait=True)
    assert "message is empty" in pg.message
    pg.edit_upload.value = ({"name": "x.png", "type": "image/png", "size": 3, "content": b"not",
                            "last_modified": datetime(2026, 1, 1)},)
    assert "could not read" in pg.message


def test_edit_without_an_image_says_so(pg):
    pg.edit_image = None
    pg.edit_clicked(wait=True)
    assert "no image to edit" in pg.message


def test_labels_switch_language(pg):
    pg.language.value = "zh"
    assert pg.t2i_button.description == LABELS["zh"]["generate"] and pg.tabs.get_title(0) == "文生图"
    pg.language.value = "en"
    assert pg.t2i_button.description == "Generate"


def test_every_label_is_translated_and_used(pg):
    """Both languages have the same keys, and every key is shown somewhere (no tab hard-codes English)."""
    import inspect

    from bagel_lite.ui import playground

    assert LABELS["en"].keys() == LABELS["zh"].keys()
    code = inspect.getsource(playground.Playground)
    dynamic = {"step", "token"}  # t[e.unit]: the unit a Stop names
    unused = [k for k in LABELS["en"] if f'"{k}"' not in code and k not in dynamic]
    assert not unused, unused
    pg.language.value = "zh"
    assert pg.und_note.value == LABELS["zh"]["und_note"] and pg.chat_text.placeholder == LABELS["zh"]["message"]
    assert pg.und_max.description == LABELS["zh"]["max_tokens"]
    pg.language.value = "en"


def test_guidance_sliders_say_that_a_scale_of_one_or_less_is_off(pg):
    assert pg.t2i_sampler.cfg_text.description == "cfg_text_scale (≤1: off)"
    assert pg.edit_sampler.cfg_img.description == "cfg_img_scale (≤1: off)"


def test_the_understand_tab_shows_the_call_that_asks_again(pg, pipe):
    """The reproducing line of an answer is the answer's own (``Answer.call``), and it asks the same again."""
    pg.set_und_image(render(Scene("circle", "red", "left", "large")))
    pg.und_question.value = "what color is the circle?"
    pg.answer_clicked(wait=True)
    assert pg.message == pg.last_answer.call and pg.message.startswith("pipe.answer(image, 'what color is")
    assert eval(pg.message, {"pipe": pipe, "image": pg.und_image}) == pg.last_answer
