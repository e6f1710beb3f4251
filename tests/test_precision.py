"""The CPU path a training run takes (bf16 autocast only on CPUs that compute bf16 natively, float32 elsewhere),
the thread count a CPU run chooses, and the posterior table that encodes only the scenes a run needs."""

from __future__ import annotations

import os
import random

import pytest
import torch

from bagel_lite.micro.data import MicroSize, image_batch, micro_config
from bagel_lite.micro.train import ALL_SCENES, PosteriorTable, TrainSettings, scale_scenes, train_autoencoder
from bagel_lite.micro.world import training_scene
from bagel_lite.model.autoencoder import AutoEncoder
from bagel_lite.training.precision import ENV_BF16, CpuPath, choose_threads, cpu_bf16_units, cpu_path

SMALL_AE = MicroSize(ae_ch=32)  # the narrowest autoencoder: these tests are about which path runs, not about quality


def small_ae(seed: int = 0) -> AutoEncoder:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return AutoEncoder(micro_config(8, SMALL_AE).vae).eval()


def test_the_path_follows_the_cpu_unless_told(monkeypatch):
    monkeypatch.delenv(ENV_BF16, raising=False)
    detected = cpu_path()
    assert detected.bf16 == (cpu_bf16_units() is not None)
    assert ("natively" in detected.reason) == detected.bf16  # the reason names what was found
    monkeypatch.setenv(ENV_BF16, "0")
    assert not cpu_path().bf16 and ENV_BF16 in cpu_path().reason
    monkeypatch.setenv(ENV_BF16, "1")
    assert cpu_path().bf16
    assert not cpu_path(False).bf16 and cpu_path(True).bf16  # the caller's choice wins over the environment
    assert str(cpu_path(False)).startswith("float32")


def test_a_bad_switch_value_names_the_switch_and_its_values(monkeypatch):
    monkeypatch.setenv(ENV_BF16, "yes")
    with pytest.raises(ValueError, match=rf"{ENV_BF16}='yes'.*1.*0"):
        cpu_path()


def test_autocast_runs_bf16_only_on_the_bf16_path():
    x = torch.randn(4, 8)
    w = torch.randn(8, 8)
    with CpuPath(True, "test").autocast():
        assert (x @ w).dtype == torch.bfloat16
    with CpuPath(False, "test").autocast():
        assert (x @ w).dtype == torch.float32


def test_the_autoencoder_phase_takes_the_path_it_is_given():
    """One training step on each path: the float32 step is exactly the step without autocast, the bf16 step
    is not (bf16 rounds every product)."""
    settings = TrainSettings(seed=1, ae_steps=1, ae_batch=1)
    results = {}
    for name, path in (("fp32", CpuPath(False, "test")), ("bf16", CpuPath(True, "test"))):
        ae = small_ae()
        train_autoencoder(ae, settings, path=path)
        results[name] = ae.encoder.conv_in.weight.detach().clone()
    ae = small_ae()
    with torch.autocast("cpu", enabled=False):
        train_autoencoder(ae, settings, path=CpuPath(False, "test"))
    assert torch.equal(results["fp32"], ae.encoder.conv_in.weight)
    assert not torch.equal(results["fp32"], results["bf16"])
    assert torch.allclose(results["fp32"], results["bf16"], atol=0.05)  # the same step, rounded differently


def test_the_posterior_table_does_not_depend_on_the_order_of_requests():
    ae = small_ae()
    rng = random.Random(0)
    scenes = [training_scene(rng) for _ in range(12)]
    forward, backward = PosteriorTable(ae, 4, cpu_path(False)), PosteriorTable(ae, 4, cpu_path(False))
    a = [forward(s) for s in scenes]
    b = [backward(s) for s in reversed(scenes)][::-1]
    for (ma, sa), (mb, sb) in zip(a, b):
        assert torch.equal(ma, mb) and torch.equal(sa, sb)
    # a scene's entry is its block encoded in one batch, as the recipe's one-go table computed it
    i = ALL_SCENES.index(scenes[0])
    block = ALL_SCENES[i // 4 * 4:i // 4 * 4 + 4]
    with torch.no_grad():
        mean, logvar = ae.encoder(image_batch(block)).chunk(2, dim=1)
    assert torch.equal(a[0][0], mean[i % 4]) and torch.equal(a[0][1], torch.exp(0.5 * logvar[i % 4]))


def test_the_posterior_table_encodes_only_what_is_asked():
    table = PosteriorTable(small_ae(), 1, cpu_path(False))
    rng = random.Random(1)
    scenes = {training_scene(rng) for _ in range(10)}
    for s in scenes:
        table(s)
    assert table.encoded == len(scenes)
    blocked = PosteriorTable(small_ae(), 64, cpu_path(False))
    blocked(ALL_SCENES[100])
    blocked(ALL_SCENES[127])
    assert blocked.encoded == 64  # the whole block of scenes 64..127, once, and nothing else
    with pytest.raises(ValueError, match="encode_block"):
        PosteriorTable(small_ae(), 0)


def test_scale_scenes_spread_over_the_world():
    assert scale_scenes(0) is ALL_SCENES
    some = scale_scenes(16)
    assert len(some) == len(set(some)) == 16 and some[0] == ALL_SCENES[0] and some[-1] == ALL_SCENES[-1]


def test_threads_leave_the_cores_other_jobs_use(monkeypatch):
    import bagel_lite.training.precision as precision

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(precision, "busy_cores", lambda: 0.1)
    assert choose_threads()[0] == 2
    monkeypatch.setattr(precision, "busy_cores", lambda: 1.2)  # another job keeps one core busy
    n, why = choose_threads()
    assert n == 1 and "1.2 busy with other jobs" in why
    monkeypatch.setattr(precision, "busy_cores", lambda: 7.0)
    assert choose_threads()[0] == 1  # never fewer than one
    assert choose_threads(3)[0] == 3 and "asked" in choose_threads(3)[1]
    with pytest.raises(ValueError, match="at least 1"):
        choose_threads(0)


def test_busy_cores_sees_another_busy_process():
    """A process spinning on one core shows up as about one busy core (the measuring process sleeps)."""
    import subprocess
    import sys

    from bagel_lite.training.precision import busy_cores

    quiet = busy_cores(0.3)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time

        time.sleep(0.3)
        busy = busy_cores(0.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert quiet is not None and busy is not None
    assert busy > quiet + 0.5 or busy > 0.8, (quiet, busy)
