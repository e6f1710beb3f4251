"""Micro-BAGEL: the synthetic world, the evaluator, the shipped checkpoint, the training command."""

from __future__ import annotations

import json
import random

import pytest
import torch

from bagel_lite import micro
from bagel_lite.checkpoint import load_bagel
from bagel_lite.micro.__main__ import main as micro_main
from bagel_lite.micro.data import build_tokenizer
from bagel_lite.micro.evaluate import detect, evaluate_model
from bagel_lite.micro.train import TrainSettings, train
from bagel_lite.micro.world import EMPTY, all_scenes, caption, corpus, edit, random_scene, render

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
    assert loaded.config.llm.hidden_size == 128 and loaded.config.vae.z_channels == 16


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


def test_training_is_deterministic_from_the_seed(tmp_path):
    """Two runs of the training command with the same seed write identical weights (so the full command
    reproduces the shipped checkpoint's metrics from its seed)."""
    settings = TrainSettings(seed=4, ae_steps=2, ae_batch=2, steps=3, samples_per_step=4)
    outs = []
    for name in ("a", "b"):
        train(tmp_path / name, settings, log=lambda *_: None)
        outs.append(load_bagel(tmp_path / name))
    for (k, v1), (_, v2) in zip(outs[0].model.state_dict().items(), outs[1].model.state_dict().items()):
        assert torch.equal(v1, v2), k
    for (k, v1), (_, v2) in zip(outs[0].ae.state_dict().items(), outs[1].ae.state_dict().items()):
        assert torch.equal(v1, v2), k


def test_evaluate_command_prints_a_json_line(capsys):
    micro_main(["evaluate", "--quick"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    metrics = json.loads(last)
    for key in ("t2i_color_acc", "t2i_position_acc", "vqa_acc", "edit_success"):
        assert 0.0 <= metrics[key] <= 1.0


def test_shipped_metrics_file_records_the_gates():
    metrics = json.loads((micro.CHECKPOINT / "metrics.json").read_text())
    log = json.loads((micro.CHECKPOINT / "train_log.json").read_text())
    assert log["seed"] == TrainSettings().seed
    for key in ("t2i_color_acc", "t2i_position_acc", "vqa_acc", "edit_success", "train_seconds"):
        assert key in metrics


@pytest.mark.parametrize("kind", ["recolor", "move", "resize", "remove", "add"])
def test_every_edit_kind_has_a_checkable_target(kind):
    _, source, instruction, target = edit(random_scene(random.Random(2)), random.Random(5), kind)
    assert detect(render(target)).scene.empty == target.empty
    assert instruction.split()[0] in ("make", "move", "remove", "add")
