"""Issue 14: every bad input gets a clear error, every failed or stopped turn leaves the state as it was, and
every output reproduces (in this process, in fresh processes, and from its shown call)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import datetime

import numpy as np
import pytest
import torch
from determinism import FAST, golden_pipe, outputs, run_call
from helpers import GOLDEN, REPO
from PIL import Image

from bagel_lite.inference.conversation import Conversation
from bagel_lite.inference.pipeline import Generated
from bagel_lite.inference.progress import GenerationStopped


def in_fresh_process(*args: str, timeout: int) -> subprocess.CompletedProcess:
    """``python tests/determinism.py ARGS`` in a new process with this process's CPU thread count: bits are
    promised for the same thread count (a convolution sums in another order on 1 thread than on 2)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    return subprocess.run([sys.executable, str(REPO / "tests" / "determinism.py"), *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def pipe():
    return golden_pipe()


@pytest.fixture(scope="module")
def picture():
    return Image.open(GOLDEN / "images" / "input.png")


@pytest.fixture(scope="module")
def micro_pipe():
    from bagel_lite import micro

    return micro.load()


@pytest.fixture
def pg(micro_pipe):
    from bagel_lite.ui import Playground

    p = Playground(micro_pipe)
    p.t2i_sampler.steps.value = p.edit_sampler.steps.value = 6
    p.und_max.value = 8
    return p


def kv_equal(a, b) -> bool:
    return a.kv_len == b.kv_len and a.rope == b.rope and all(
        torch.equal(x, y) for kv_a, kv_b in zip(a.past or (), b.past or ()) for x, y in zip(kv_a, kv_b))


# --- 1. chat "use last image" -------------------------------------------------------------------------------

def test_chat_use_last_image_reads_a_drawn_image_once_and_unticks(micro_pipe):
    from bagel_lite.ui import Playground

    answers, contexts = [], []
    for attach in (False, True):
        p = Playground(micro_pipe)
        p.t2i_sampler.steps.value, p.und_max.value = 6, 8
        p.chat_image_reply.value, p.chat_text.value = True, "a large blue circle at the top"
        p.chat_clicked(wait=True)
        p.chat_image_reply.value, p.chat_attach.value = False, attach
        p.chat_text.value = "what color is the circle?"
        p.chat_clicked(wait=True)
        assert not p.chat_attach.value, "'use last image' attaches once, then unticks"
        answers.append(p.last_answer)
        contexts.append(p.chat.state.gen)
    assert answers[0] == answers[1] and kv_equal(*contexts), "the drawn image is already in the chat"


def test_use_last_image_attaches_an_image_from_another_tab_once(pg):
    pg.generate_clicked(wait=True)
    pg.chat_attach.value, pg.chat_text.value = True, "what color is the circle?"
    pg.chat_clicked(wait=True)
    assert [t.role for t in pg.chat.turns] == ["user", "user", "model"]
    assert pg.chat.turns[0].content is pg.last_result.image and not pg.chat_attach.value


# --- 2. a failed or stopped turn leaves everything as it was -------------------------------------------------

def widget_state(p):
    return (p.result.value, p.preview.value, p.chat_log.children, p.chat_text.value, p.chat_attach.value,
            p.chat.state, p.last_result, p.last_answer, p.progress.value, p.progress.max)


@pytest.mark.parametrize("failure", [RuntimeError("boom"), KeyboardInterrupt(), "stop"])
def test_a_failed_or_stopped_chat_turn_changes_nothing(pg, failure):
    pg.generate_clicked(wait=True)  # an image to attach, from the text-to-image tab
    pg.chat_text.value = "a red square"
    pg.chat_clicked(wait=True)  # one good turn first
    original = pg._callback

    def failing_callback(n, shape):
        inner = original(n, shape)

        def cb(info):
            inner(info)
            if info.step == 2:
                if failure == "stop":
                    pg.stop()
                    return inner(info)
                raise failure
        return cb

    pg._callback = failing_callback
    pg.chat_image_reply.value, pg.chat_attach.value, pg.chat_text.value = True, True, "draw it bigger"
    before = widget_state(pg)
    if isinstance(failure, KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            pg.chat_clicked(wait=True)
    else:
        pg.chat_clicked(wait=True)
        assert ("stopped at step 2" if failure == "stop" else "RuntimeError: boom") in pg.message
    after = widget_state(pg)
    assert after[:2] == before[:2] and after[2] == before[2] and after[3:] == before[3:]
    assert pg.chat.state is before[5] and not pg.chat_send.disabled


def test_resending_after_a_failed_turn_does_not_duplicate_it(pipe):
    chat = pipe.chat()
    chat.send("a red circle", seed=1, max_tokens=3)

    def boom(info):
        raise RuntimeError("the GPU fell over")

    with pytest.raises(RuntimeError):
        chat.send("draw it", reply_image=True, seed=2, image_shape=(32, 32), callback=boom, num_timesteps=4)
    assert len(chat.turns) == 2
    chat.send("draw it", reply_image=True, seed=2, image_shape=(32, 32), num_timesteps=4)
    assert [t.role for t in chat.turns] == ["user", "model", "user", "model"]


def test_a_chat_at_the_position_limit_is_not_stuck(pipe):
    chat = pipe.chat()
    chat.send("a " * 2000, seed=0, max_tokens=2)
    before = chat.state
    with pytest.raises(ValueError, match="reached the model's last position") as full:
        chat.send("b " * 2000, seed=0, max_tokens=4000)
    # it says the conversation is full, that nothing changed, and how to go on
    assert "this conversation is full" in str(full.value) and "kept as it was" in str(full.value)
    assert "pipe.chat()" in str(full.value)
    assert chat.state is before
    assert isinstance(chat.send("hi", seed=0, max_tokens=2).text, str)


# --- 3. chat determinism: every draw from the turn's generator ----------------------------------------------

def test_chat_with_images_ignores_the_global_random_state(pipe, picture):
    states = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        chat = Conversation(pipe.engine)
        chat.send("what is this?", image=picture, seed=9, max_tokens=3)
        chat.send("draw it", reply_image=True, seed=10, image_shape=(32, 32), num_timesteps=3)
        states.append(chat.state)
    assert kv_equal(states[0].gen, states[1].gen) and kv_equal(states[0].cfg_text, states[1].cfg_text)


# --- 4. uploads ------------------------------------------------------------------------------------------

def png_bytes(size=(64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def upload(p, content: bytes):
    p.edit_upload.value = ({"name": "x.png", "type": "image/png", "size": len(content), "content": content,
                            "last_modified": datetime(2026, 1, 1)},)


def test_a_bad_upload_keeps_the_edit_image(pg, monkeypatch):
    pg.set_edit_image(Image.new("RGB", (64, 64), (0, 0, 255)))
    image, shown = pg.edit_image, pg.edit_source.value
    upload(pg, png_bytes()[:60])  # a valid header, then the file is cut
    assert "could not read the upload" in pg.message and pg.edit_image is image and pg.edit_source.value == shown
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64 x 64 is now a decompression bomb
    upload(pg, png_bytes())
    assert "decompression bomb" in pg.message and pg.edit_image is image and pg.edit_source.value == shown


def test_an_unexpected_failure_in_a_run_is_reported(pg):
    def work():
        raise OSError("disk on fire")

    pg._run(work, wait=True)
    assert pg.message == "OSError: disk on fire" and not pg.t2i_button.disabled


# --- 5. inputs of the wrong kind ----------------------------------------------------------------------------

def test_a_path_is_opened_and_a_missing_one_refused(pipe, picture, tmp_path):
    path = tmp_path / "scene.png"
    picture.save(path)
    assert pipe.answer(str(path), "what?", max_tokens=3) == pipe.answer(picture, "what?", max_tokens=3)
    assert pipe.answer(path.read_bytes(), "what?", max_tokens=3) == pipe.answer(picture, "what?", max_tokens=3)
    with pytest.raises(ValueError, match="'scene.png' is not a file"):
        pipe.answer("scene.png", "what?")


@pytest.mark.parametrize("call,error,match", [
    (lambda p, im: p.answer("what?", im), TypeError, "question must be a string .did you swap"),
    (lambda p, im: p.generate(im), TypeError, "prompt must be a string"),
    (lambda p, im: p.edit("make it blue", im), TypeError, "instruction must be a string"),
    (lambda p, im: p.answer(np.zeros((8, 8, 3), np.uint8), "what?"), TypeError, "Image.fromarray"),
    (lambda p, im: p.interleave([im, 3]), TypeError, "must be a PIL image, a path"),
])
def test_wrong_kinds_are_refused(pipe, picture, call, error, match):
    with pytest.raises(error, match=match):
        call(pipe, picture)


# --- 6. NaN and infinity ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name,value", [
    ("cfg_text_scale", float("nan")), ("cfg_text_scale", float("inf")), ("cfg_img_scale", float("inf")),
    ("timestep_shift", float("nan")), ("timestep_shift", float("inf")), ("cfg_renorm_min", float("nan")),
    ("cfg_interval", (float("nan"), 1.0)),
])
def test_nan_and_inf_settings_are_refused_before_compute(pipe, name, value):
    with pytest.raises(ValueError, match=f"{name}.*must be .*finite number.*nan|{name}.*inf"):
        pipe.generate("x", image_shape=(32, 32), callback=pytest.fail, **{**FAST, name: value})


def test_nan_temperature_is_refused(pipe, picture):
    with pytest.raises(ValueError, match="temperature must be a finite number.*got nan"):
        pipe.answer(picture, "what?", do_sample=True, temperature=float("nan"))
    with pytest.raises(ValueError, match="init_noise holds NaN"):
        pipe.generate("x", image_shape=(32, 32), init_noise=torch.full((4, 64), float("nan")), **FAST)


# --- 7. the shown call reproduces, in a fresh process --------------------------------------------------------

def test_the_call_names_init_noise_the_think_limit_and_batching(pipe, tmp_path):
    noise = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    out = pipe.generate("a red circle", image_shape=(32, 32), seed=1, init_noise=noise, think=True,
                        max_think_tokens=5, batch_cfg=False, **FAST)
    for part in ("init_noise=init_noise", "think=True", "max_think_tokens=5", "batch_cfg=False"):
        assert part in out.call
    again = eval(out.call, {"pipe": pipe, "init_noise": noise})
    assert again.image.tobytes() == out.image.tobytes() and again.text == out.text
    torch.save(noise, tmp_path / "noise.pt")
    fresh = in_fresh_process("call", out.call, str(tmp_path / "noise.pt"), timeout=300)
    assert fresh.returncode == 0, fresh.stderr
    from determinism import digest

    assert json.loads(fresh.stdout.strip().splitlines()[-1]) == digest(out.image, out.latents, out.text)
    assert run_call(out.call, str(tmp_path / "noise.pt")) == digest(out.image, out.latents, out.text)


def test_an_edit_call_reproduces_in_a_fresh_process(pipe, picture):
    from determinism import digest

    out = pipe.edit(picture, "make it blue", seed=2, cfg_img_scale=1.5, **FAST)
    fresh = in_fresh_process("call", out.call, timeout=300)
    assert fresh.returncode == 0, fresh.stderr
    assert json.loads(fresh.stdout.strip().splitlines()[-1]) == digest(out.image, out.latents, out.text)


# --- same seed, same output: in one process and in two --------------------------------------------------------

def test_same_seed_same_outputs_in_this_process_and_in_two_others(pipe):
    here = [outputs(pipe), outputs(pipe)]
    assert here[0] == here[1]
    others = []
    for global_seed in ("1", "2"):  # each process also seeds the global RNG differently: it must not matter
        run = in_fresh_process("outputs", global_seed, timeout=600)
        assert run.returncode == 0, run.stderr
        others.append(json.loads(run.stdout.strip().splitlines()[-1]))
    assert others[0] == others[1] == here[0]


# --- 8. Stop while text is written ------------------------------------------------------------------------

def test_stop_is_heard_while_writing_text(pipe, picture):
    with pytest.raises(GenerationStopped, match="token 2"):
        pipe.answer(picture, "what?", max_tokens=50, callback=lambda info: info.step < 2)
    with pytest.raises(GenerationStopped, match="token 1"):
        pipe.generate("x", think=True, image_shape=(32, 32), text_callback=lambda info: info.step < 1, **FAST)


def test_the_playground_stop_ends_an_answer(pg):
    pg.set_und_image(Image.new("RGB", (64, 64)))
    pg.und_max.value = 64
    original = pg._text_callback

    def stopping():
        inner = original()

        def cb(info):
            if info.step == 1:
                pg.stop()
            return inner(info)
        return cb

    pg._text_callback = stopping
    answer_before = pg.und_answer.value
    pg.answer_clicked(wait=True)
    assert "stopped at token 1" in pg.message and pg.und_answer.value == answer_before


# --- 9. clear errors for odd values ---------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,error,match", [
    (dict(seed=2**70), ValueError, r"seed must be an integer in \[0, 18446744073709551615\], got 11805916207"),
    (dict(seed=-1), ValueError, "seed must be an integer in"),
    (dict(seed="3"), TypeError, r"seed must be an integer .*got '3' \(str\)"),
    (dict(image_shape=(32.0, 32.0)), TypeError, r"image_shape must be \(height, width\), two integers"),
    (dict(cfg_interval=(0.4,)), ValueError, "cfg_interval must be two numbers .* got 1 numbers"),
    (dict(cfg_interval=(0.0, 0.5, 1.0)), ValueError, "cfg_interval must be two numbers .* got 3 numbers"),
    (dict(cfg_text_scale="4"), TypeError, r"cfg_text_scale must be a finite number .*got '4' \(str\)"),
    (dict(num_timesteps=4.0), TypeError, r"num_timesteps must be an integer .*got 4.0 \(float\)"),
    (dict(cfg_txt_scale=3.0), TypeError, "unknown setting 'cfg_txt_scale' .did you mean 'cfg_text_scale'"),
    (dict(think="yes"), TypeError, "think must be True or False"),
])
def test_odd_values_get_errors_that_name_them(pipe, kwargs, error, match):
    with pytest.raises(error, match=match):
        pipe.generate("x", **{"image_shape": (32, 32), **FAST, **kwargs})


def test_surrogates_in_a_prompt_are_named(pipe, picture):
    with pytest.raises(ValueError, match="unpaired surrogate '.ud800' at character 3"):
        pipe.answer(picture, "hi \ud800 there")
    with pytest.raises(ValueError, match="unpaired surrogate"):
        pipe.generate("a \udcff circle", image_shape=(32, 32), **FAST)


def test_an_answer_that_reaches_the_last_position_says_so(pipe):
    with pytest.raises(ValueError, match=r"reached the model's last position \(4096\) after \d+ tokens"):
        pipe.answer(None, "a " * 4000, max_tokens=1000)


def test_chat_reply_call_resends_the_turn(pipe):
    chat = pipe.chat()
    reply = chat.send("a blue square", reply_image=True, seed=6, image_shape=(32, 32), num_timesteps=3)
    assert reply.call == "chat.send('a blue square', seed=6, reply_image=True, image_shape=(32, 32), num_timesteps=3)"
    again = eval(reply.call, {"chat": pipe.chat()})
    assert again.image.tobytes() == reply.image.tobytes()
    assert isinstance(Generated(reply.image, None, reply.seed, reply.settings, reply.call), Generated)


def test_an_answer_cut_by_max_tokens_says_so(pipe, picture):
    """``answer`` returns a str that knows whether the model ended it; a cut answer's repr says so (issue 24)."""
    from bagel_lite import Answer

    whole = pipe.answer(picture, "what is it?", max_tokens=40)
    cut = pipe.answer(picture, "what is it?", max_tokens=2)
    assert isinstance(cut, Answer) and isinstance(cut, str)
    assert not cut.finished and "cut: max_tokens=2" in repr(cut)
    assert whole.startswith(cut) and len(whole) >= len(cut)  # the same greedy answer, cut short
    assert whole.finished == ("cut" not in repr(whole))
    ended = pipe.run(["hi"], understanding_output=True, max_think_tokens=2)
    assert ended.finished is False and ended.outputs[0].finished is False


def test_answer_max_tokens_is_named_as_the_caller_wrote_it(pipe):
    with pytest.raises(ValueError, match=r"^max_tokens must be"):
        pipe.answer(None, "hi", max_tokens=0)


def test_an_unknown_chat_keyword_lists_the_chats_own_and_the_samplers(pipe):
    with pytest.raises(TypeError) as err:
        pipe.chat().send("a red circle", image_output=True)
    message = str(err.value)
    assert "'image_output'" in message and "reply_image" in message and "cfg_text_scale" in message
