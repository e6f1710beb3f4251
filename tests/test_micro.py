"""Micro-BAGEL: the synthetic world, the evaluator, the shipped checkpoint, the training command."""

from __future__ import annotations

import json
import random
from dataclasses import asdict

import pytest
import torch

from bagel_lite import micro
from bagel_lite.loading.checkpoint import load_bagel
from bagel_lite.micro.__main__ import main as micro_main
from bagel_lite.micro.data import MicroSize, build_tokenizer, micro_config
from bagel_lite.micro.evaluate import detect, evaluate_model
from bagel_lite.micro.train import LONG, FinalStage, Resumable, TrainSettings, train
from bagel_lite.micro.world import (
    EMPTY,
    all_scenes,
    caption,
    corpus,
    edit,
    held_out_scene,
    is_held_out,
    random_scene,
    render,
    training_scene,
)
from bagel_lite.model.autoencoder import AutoEncoder

SHIPPED_SIZE_LIMIT = 25 * 1024 * 1024


def test_world_is_a_pure_function_of_the_seed():
    a = [random_scene(random.Random(3)) for _ in range(5)]
    b = [random_scene(random.Random(3)) for _ in range(5)]
    assert a == b
    assert render(a[0]).tobytes() == render(b[0]).tobytes()
    kind, source, instruction, target = edit(a[0], random.Random(1), "recolor")
    assert target.color != source.color and target.shape == source.shape and "make the" in instruction
    assert edit(a[0], random.Random(1), "add")[1] == EMPTY


def test_evaluator_reads_every_rendered_scene():
    for scene in all_scenes()[1::7]:
        found = detect(render(scene)).scene
        assert (found.shape, found.color, found.position, found.size) == \
            (scene.shape, scene.color, scene.position, scene.size), scene
    assert detect(render(EMPTY)).scene.empty


def test_tokenizer_covers_the_world_and_is_deterministic():
    tok, special = build_tokenizer()
    again, _ = build_tokenizer()
    assert tok.get_vocab() == again.get_vocab()
    for text in sorted(set(corpus()))[:50]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text and len(ids) <= len(text.split()) + 1
    assert special.bos not in tok.encode("a red circle")


def test_shipped_checkpoint_is_small_and_loads_with_the_standard_loader():
    files = list(micro.CHECKPOINT.iterdir())
    assert sum(f.stat().st_size for f in files) <= SHIPPED_SIZE_LIMIT
    loaded = load_bagel(micro.CHECKPOINT)
    assert loaded.config.llm.hidden_size == LONG.size.hidden and loaded.config.vae.z_channels == 16
    assert loaded.config.vae.ch == LONG.size.ae_ch  # the long recipe made it


def test_shipped_checkpoint_passes_a_small_accuracy_check():
    """Clearly trained: text-to-image at the issue's gates, answers and edits far above chance (a random
    answer of the right kind is right ~30 % of the time; an edit with all four attributes right by chance
    almost never). The full gates are measured by `python -m bagel_lite.micro evaluate`."""
    pipe = micro.load()
    m = evaluate_model(pipe, n_t2i=12, n_vqa=30, n_edit=10, seed=777, num_timesteps=25, progress=False)
    assert m["t2i_color_acc"] >= 0.9 and m["t2i_position_acc"] >= 0.8, m
    assert m["vqa_acc"] >= 0.5, m
    assert m["edit_success"] >= 0.3, m


def test_generate_uses_cfg_on_the_micro_model():
    pipe = micro.load()
    prompt = caption(random_scene(random.Random(0)))
    guided = pipe.generate(prompt, seed=1, num_timesteps=10, progress=False)
    unguided = pipe.generate(prompt, seed=1, num_timesteps=10, cfg_text_scale=1.0, progress=False)
    assert not torch.equal(guided.latents, unguided.latents)


TINY = MicroSize(hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64, vit_hidden=32, vit_layers=1,
                 vit_heads=1, ae_ch=32)


def tiny_settings(**kw) -> TrainSettings:
    return TrainSettings(**{**dict(seed=4, size=TINY, ae_steps=3, ae_batch=2, align_steps=2, steps=3,
                                   samples_per_step=4, eval_every=0, threads=1, encode_block=1, scale_scenes=16,
                                   ae_eval_scenes=8,
                                   final=FinalStage(steps=2, warmup=1)), **kw})


def test_training_is_deterministic_from_the_seed(tmp_path):
    """Two runs of the training command with the same seed write identical files (so the long command
    reproduces the shipped checkpoint byte for byte from its seed); each trains on its own thread count and
    hands the process its old one back (whatever runs next must not change its bits)."""
    before = torch.get_num_threads()
    for name, threads in (("a", 1), ("b", 2)):
        torch.set_num_threads(threads)
        train(tmp_path / name, tiny_settings(), log=lambda *_: None)
        assert torch.get_num_threads() == threads
    torch.set_num_threads(before)
    for file in ("ema.safetensors", "ae.safetensors", "vocab.json", "merges.txt"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file


def test_the_quick_recipe_takes_the_shipped_autoencoder_frozen(tmp_path):
    """``shipped_autoencoder``: no autoencoder phase; the folder written carries the shipped weights unchanged."""
    settings = tiny_settings(shipped_autoencoder=True, ae_steps=0)  # TINY's autoencoder has the shipped width
    stats = train(tmp_path / "q", settings, log=lambda *_: None)
    assert stats["ae_curve"] == [] and stats["ae_psnr"] > 30
    assert (tmp_path / "q" / "ae.safetensors").read_bytes() == (micro.CHECKPOINT / "ae.safetensors").read_bytes()
    # its scale and shift are the shipped ones (measured when it was trained), not measured again
    assert json.loads((tmp_path / "q" / "ae_config.json").read_text()) == \
        json.loads((micro.CHECKPOINT / "ae_config.json").read_text())


def test_a_short_run_encodes_only_the_scenes_it_uses(tmp_path):
    """A tiny run asks the autoencoder for a few dozen of the world's 1,621 scenes, not all of them, and its log
    says which CPU path its autoencoder took."""
    lines = []
    stats = train(tmp_path / "t", tiny_settings(), log=lines.append, bf16=False)
    assert 0 < stats["scenes_encoded"] < 100, stats["scenes_encoded"]
    assert stats["cpu_path"].startswith("float32") and any("float32" in line for line in lines)


def test_stage_3_starts_from_the_weights_stage_2_would_ship(tmp_path):
    """A final stage of no steps writes exactly the file a recipe without one writes: stage 3 continues from
    stage 2's EMA as stored (float16), not from the training weights."""
    train(tmp_path / "two", tiny_settings(final=None), log=lambda *_: None)
    train(tmp_path / "three", tiny_settings(final=FinalStage(steps=0)), log=lambda *_: None)
    stats = train(tmp_path / "real", tiny_settings(), log=lambda *_: None)
    two, three = ((tmp_path / n / "ema.safetensors").read_bytes() for n in ("two", "three"))
    assert two == three and (tmp_path / "real" / "ema.safetensors").read_bytes() != two
    assert stats["final_start"] == 5 and len(stats["loss"]["ce"]) == 7


def test_stage_3_can_train_only_some_parameters(tmp_path):
    """``FinalStage.trainable``: the named parameters change, every other one keeps stage 2's stored value."""
    from safetensors.torch import load_file

    train(tmp_path / "two", tiny_settings(final=FinalStage(steps=0)), log=lambda *_: None)
    train(tmp_path / "vit", tiny_settings(final=FinalStage(steps=2, warmup=1, trainable=("vit_model",))),
          log=lambda *_: None)
    two, vit = (load_file(tmp_path / n / "ema.safetensors") for n in ("two", "vit"))
    changed = {k for k in two if not torch.equal(two[k], vit[k])}
    assert changed and all(k.startswith("vit_model") for k in changed)


@pytest.mark.parametrize("stop_at", [2, 6, 9])  # inside the autoencoder phase, inside BAGEL's, inside stage 3
def test_a_stopped_run_resumes_to_the_same_bytes(tmp_path, monkeypatch, stop_at):
    settings = tiny_settings(state_every_s=0.0)  # a state after every step
    train(tmp_path / "whole", settings, log=lambda *_: None)
    state = tmp_path / "state"
    saves = {"n": 0}
    original = Resumable.maybe_save

    def save_then_stop(self, make_state, force=False):
        original(self, make_state, force)
        saves["n"] += 1
        if saves["n"] == stop_at:
            raise KeyboardInterrupt  # as if the session ended right after this save

    monkeypatch.setattr(Resumable, "maybe_save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "resumed", settings, log=lambda *_: None, state_path=state)
    monkeypatch.setattr(Resumable, "maybe_save", original)
    assert (state / "complete.json").is_file() and (state / "progress.pt").is_file()
    train(tmp_path / "resumed", settings, log=lambda *_: None, state_path=state)
    for file in ("ema.safetensors", "ae.safetensors"):
        assert (tmp_path / "whole" / file).read_bytes() == (tmp_path / "resumed" / file).read_bytes(), file


def test_held_out_scenes_never_occur_in_training_batches(monkeypatch):
    """Every scene the trainer renders or encodes, in the autoencoder phase and in BAGEL's samples, is a
    training scene; evaluation draws only held-out ones."""
    import bagel_lite.micro.data as data_module
    import bagel_lite.micro.train as train_module

    seen = []
    real_batch = train_module.image_batch

    def recording_batch(scenes, *a, **kw):
        seen.extend(scenes)
        return real_batch(scenes, *a, **kw)

    monkeypatch.setattr(train_module, "image_batch", recording_batch)
    ae = AutoEncoder(micro_config(8, TINY).vae)
    train_module.train_autoencoder(ae, tiny_settings(ae_steps=4, ae_batch=16))
    assert len(seen) == 64
    used = []
    real_render = data_module.render
    monkeypatch.setattr(data_module, "render", lambda scene: (used.append(scene), real_render(scene))[1])
    tok, _ = build_tokenizer()
    maker = data_module.SampleMaker(tok, lambda scene: (used.append(scene), torch.zeros(16, 8, 8))[1],
                                    question_shift=LONG.final.question_shift)  # as stage 3 draws them
    rng = random.Random(0)
    for i in range(600):
        maker.sample(("t2i", "vqa", "edit")[i % 3], rng)
    assert len(used) >= 1000
    assert not any(is_held_out(s) for s in seen + used)
    assert any(is_held_out(held_out_scene(random.Random(i))) for i in range(5))
    assert all(is_held_out(held_out_scene(random.Random(i))) for i in range(200))
    held_out = [s for s in all_scenes() if is_held_out(s)]
    for attribute in ("shape", "color", "position", "size"):  # every value occurs on both sides
        assert {getattr(s, attribute) for s in held_out} == {getattr(s, attribute) for s in all_scenes()[1:]}


def test_a_shifted_question_picture_is_never_a_held_out_picture():
    """Questions see their picture moved by up to 1 or 2 pixels (``question_shift``): no move the sampler may
    take turns a training scene's picture into a held-out scene's picture, pixel for pixel."""
    from bagel_lite.micro.data import lands_on_held_out, question_move, shifted

    held_out = {render(s).tobytes() for s in all_scenes() if is_held_out(s)}
    training = [s for s in all_scenes() if not is_held_out(s)]
    moves = [(dx, dy) for dx in range(-2, 3) for dy in range(-2, 3)]
    allowed = {shifted(render(s), dx, dy).tobytes() for s in training for dx, dy in moves
               if not lands_on_held_out(s, dx, dy)}
    assert len(held_out) == 360 and len(allowed) > 9 * len(training)  # many pictures no scene draws
    assert not held_out & allowed
    assert held_out & {shifted(render(s), 2, -2).tobytes() for s in training}  # the moves left out would leak
    assert all(not lands_on_held_out(s, dx, dy) for s in training for dx in (-1, 0, 1) for dy in (-1, 0, 1))
    rng, drawn = random.Random(0), set()
    for s in training[:300]:
        move = question_move(s, 2, rng)
        assert not lands_on_held_out(s, *move) and max(map(abs, move)) <= 2
        drawn.add(move)
    assert len(drawn) == 25  # every move of up to 2 pixels is drawn for some scene


def test_a_one_pixel_question_move_draws_as_two_randints():
    """``question_move`` with k = 1 never redraws, so stage 3 of the recipe that made the shipped v3 draws the
    same samples as before the 2-pixel move existed."""
    from bagel_lite.micro.data import question_move

    a, b = random.Random(3), random.Random(3)
    scenes = [training_scene(random.Random(i)) for i in range(200)]
    assert [question_move(s, 1, a) for s in scenes] == [(b.randint(-1, 1), b.randint(-1, 1)) for _ in scenes]
    assert question_move(scenes[0], 0, a) == (0, 0)


def test_evaluation_draws_balanced_held_out_sets(monkeypatch):
    pipe = micro.load()
    asked = []
    real_answer = pipe.answer
    monkeypatch.setattr(pipe, "answer", lambda image, q, **kw: (asked.append(q), real_answer(image, q, **kw))[1])
    m = evaluate_model(pipe, n_t2i=2, n_vqa=8, n_edit=5, seed=3, num_timesteps=3, progress=False, n_ae=4)
    assert {k for k in m if k.startswith("edit_") and k != "edit_success"} == \
        {f"edit_{k}_success" for k in ("add", "move", "recolor", "remove", "resize")}
    assert {k for k in m if k.startswith("vqa_") and k != "vqa_acc"} == \
        {f"vqa_{k}_acc" for k in ("color", "position", "shape", "size")}
    assert len(asked) == 8 and 0 < m["ae_psnr"] < 100 and 0 <= m["ae_attribute_acc"] <= 1
    other = evaluate_model(pipe, n_t2i=0, n_vqa=8, n_edit=0, seed=4, num_timesteps=3, progress=False)
    assert len(asked) == 16 and asked[:8] != asked[8:] or other["vqa_acc"] != m["vqa_acc"]


def test_evaluate_command_prints_a_json_line(capsys):
    micro_main(["evaluate", "--quick", "--threads", "1"])
    out, err = capsys.readouterr()
    assert "on 1 thread(s)" in out.splitlines()[0]  # says how many threads it runs on, and why
    assert "questions" in err  # progress bars while it works
    last = out.strip().splitlines()[-1]
    metrics = json.loads(last)
    assert metrics["evaluate_threads"] == 1
    for key in ("t2i_color_acc", "t2i_position_acc", "vqa_acc", "edit_success"):
        assert 0.0 <= metrics[key] <= 1.0


def test_shipped_metrics_file_records_the_gates():
    metrics = json.loads((micro.CHECKPOINT / "metrics.json").read_text())
    log = json.loads((micro.CHECKPOINT / "train_log.json").read_text())
    assert log["seed"] == TrainSettings().seed
    for key in ("t2i_color_acc", "t2i_position_acc", "vqa_acc", "edit_success", "train_seconds", "ae_psnr",
                "ae_attribute_acc", "vqa_position_acc", "edit_recolor_success", "edit_resize_success"):
        assert key in metrics
    assert metrics["recipe"] == "long"
    # the shipped files are the long recipe's output: its log was written with exactly today's settings
    assert log["settings"] == json.loads(json.dumps(asdict(LONG), default=str))
    # the whole run is in the log, for notebooks to plot without training: stage 2, then stage 3
    stage2 = LONG.align_steps + LONG.steps
    assert log["final_start"] == stage2 and log["settings"]["final"]["steps"] == LONG.final.steps
    assert len(log["loss"]["ce"]) == len(log["loss"]["mse"]) == stage2 + LONG.final.steps
    assert [e["step"] for e in log["evals"]] == (list(range(LONG.eval_every, stage2 + 1, LONG.eval_every))
                                                 + list(range(stage2 + LONG.eval_every,
                                                              stage2 + LONG.final.steps + 1, LONG.eval_every)))


@pytest.mark.parametrize("kind", ["recolor", "move", "resize", "remove", "add"])
def test_every_edit_kind_has_a_checkable_target(kind):
    _, source, instruction, target = edit(random_scene(random.Random(2)), random.Random(5), kind)
    assert detect(render(target)).scene.empty == target.empty
    assert instruction.split()[0] in ("make", "move", "remove", "add")


def test_two_processes_train_micro_bagel_as_one_process_with_two_micro_batches(tmp_path):
    """``torchrun --nproc_per_node 2`` (gloo on the CPU): every process draws the same samples and noise and trains
    on its half; one process accumulating the same two packed sequences writes the same weights. Measured here:
    identical losses, weights within 1e-7; allowed: 1e-6 (float32 sums taken in another order)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    settings = tiny_settings(micro_batches=2, final=None)
    stats = train(tmp_path / "one", settings, log=lambda *_: None, bf16=False)
    repo = Path(__file__).resolve().parents[1]
    script = (f"import sys; sys.path.insert(0, {str(repo / 'tests')!r}); from test_micro import tiny_settings; "
              "from bagel_lite.micro.train import train; "
              f"train(__import__('pathlib').Path({str(tmp_path / 'two')!r}), tiny_settings(micro_batches=2, "
              "final=None), log=lambda *_: None, bf16=False)")
    (tmp_path / "run.py").write_text(script)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(random.Random().randrange(20000, 40000)), str(tmp_path / "run.py")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two_log = json.loads((tmp_path / "two" / "train_log.json").read_text())
    assert two_log["loss"]["ce"] == pytest.approx(stats["loss"]["ce"], abs=2e-4)  # logged to 4 decimals
    assert two_log["loss"]["mse"] == pytest.approx(stats["loss"]["mse"], abs=2e-4)
    one, two = load_file(tmp_path / "one" / "ema.safetensors"), load_file(tmp_path / "two" / "ema.safetensors")
    assert max(float((one[k].float() - two[k].float()).abs().max()) for k in one) < 1e-6


def test_the_long_recipe_never_writes_over_the_shipped_checkpoint_unless_told(capsys):
    with pytest.raises(SystemExit):
        micro_main(["train"])
    assert "--out" in capsys.readouterr().err


def test_a_watched_run_logs_pictures_and_answers_at_each_look(tmp_path):
    """``watch_every``: the log holds, at every look, what the EMA model draws for fixed held-out prompts (PNG)
    and answers to fixed held-out questions -- the same scenes every time, never training ones."""
    import base64
    import io

    from PIL import Image

    from bagel_lite.micro.train import watch_scenes

    stats = train(tmp_path / "w", tiny_settings(watch_every=2), log=lambda *_: None, bf16=False)
    steps = [w["step"] for w in stats["watch"]]
    assert steps == [2, 4, 7]  # stage 2 (5 steps) at its steps 2 and 4; stage 3 (2 steps) at its step 2, i.e. 5 + 2
    for look in stats["watch"]:
        assert len(look["pictures"]) == 4 and len(look["answers"]) == 4
        assert Image.open(io.BytesIO(base64.b64decode(look["pictures"][0]))).size == (64, 64)
    prompts, questions = watch_scenes()
    assert all(is_held_out(s) for s in prompts + [s for s, _ in questions])
    assert json.loads((tmp_path / "w" / "train_log.json").read_text())["watch"] == stats["watch"]


def test_the_shipped_watch_log_is_the_quick_recipe_watched():
    """``checkpoint/quick_watch_log.json`` (notebook 05b, "watch it learn") was written by the quick recipe with
    ``--watch 250`` and nothing else changed: its settings are today's QUICK recipe's, its looks every 250 steps."""
    from dataclasses import replace

    from bagel_lite.micro.train import QUICK

    log = json.loads((micro.CHECKPOINT / "quick_watch_log.json").read_text())
    recipe = json.loads(json.dumps(asdict(replace(QUICK, watch_every=250)), default=str))
    assert log["settings"] == recipe
    assert [w["step"] for w in log["watch"]] == list(range(250, 3001, 250))
    assert all(len(w["pictures"]) == 4 and len(w["answers"]) == 4 for w in log["watch"])
