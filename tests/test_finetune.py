"""Fine-tuning an official-layout folder: the command on one process, on two (DDP, FSDP), killed and resumed."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import bagel_lite
from bagel_lite.loading.checkpoint import CheckpointError
from bagel_lite.training.data import write_demo_data
from bagel_lite.training.finetune import main as finetune

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "golden" / "tiny_ckpt"  # a tiny official-layout folder (the golden set's checkpoint)


def write_data(folder: Path, lines: int = 20) -> Path:
    """A 20-line JSONL of the three kinds (text-to-image, question, edit) with 32x32 pictures of a circle."""
    return write_demo_data(folder, lines)


def args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(TINY), "--data", str(data), "--out", str(out), "--tokens", "200", "--max-tokens", "400",
            "--image-size", "32", "--lr", "1e-3", "--warmup", "1", "--ema", "0.9", "--save-every", "0", *extra]


def env() -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1")
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def torchrun(argv: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
           str(random.Random().randrange(20000, 40000)), "-m", "bagel_lite.training.finetune", *argv]
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def weights(folder: Path) -> dict:
    return load_file(folder / "ema.safetensors")


def max_diff(a: dict, b: dict, skip: str | None = None) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a if skip is None or not k.endswith(skip))


# The ViT's key bias adds the same number to every score of a query, which softmax ignores: its gradient is zero
# up to rounding, and Adam (dividing by the gradient's own size) turns that rounding into steps of up to lr each.
# Two runs that round differently (FSDP's reduce-scatter against one process) move it differently: measured 3e-6
# to 2.5e-4 over 3 steps at lr 1e-3; the bound is lr x steps = 3e-3. Every other weight agrees within 1e-6.
NOISE_ONLY = "k_proj.bias"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The runs inside this process compute on one thread, as the torchrun processes do (env): a different thread
    count sums in another order, and Adam turns the last-bit differences of near-zero gradients into visible ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def one_process(data, tmp_path_factory) -> Path:
    """The reference: one process accumulating the two micro-batches of each step's global batch."""
    out = tmp_path_factory.mktemp("runs") / "one"
    finetune(args(data, out, "--steps", "3", "--accumulate", "2"))
    return out


def test_the_command_trains_saves_and_the_folder_answers_and_draws(one_process):
    log = json.loads((one_process / "train_log.json").read_text())
    assert len(log["loss"]["ce"]) == 3 and all(v > 0 for v in log["loss"]["ce"] + log["loss"]["mse"])
    start, tuned = weights(TINY), weights(one_process)
    assert start.keys() == tuned.keys() and max_diff(start, tuned) > 1e-3  # it trained
    pipe = bagel_lite.load(one_process)
    image = pipe.generate("a red circle", image_shape=(32, 32), num_timesteps=3, seed=0).image
    assert image.size == (32, 32)
    answer = pipe.answer(image, "What colour is the circle?", max_tokens=4)
    assert isinstance(answer, str) and answer.max_tokens == 4


def test_two_processes_equal_one_with_the_same_global_batch(data, one_process, tmp_path):
    """DDP on 2 CPU processes (gloo, under torchrun), one micro-batch each, against one process accumulating the
    same two: the losses are token-weighted over the global batch (trainer.py), so the step is the same. Measured
    here: identical losses and weights (0.0); allowed: 1e-6, the float32 rounding of a sum taken in another order."""
    torchrun(args(data, tmp_path / "two", "--steps", "3"))
    one = json.loads((one_process / "train_log.json").read_text())["loss"]
    two = json.loads((tmp_path / "two" / "train_log.json").read_text())["loss"]
    for key in ("ce", "mse"):
        assert two[key] == pytest.approx(one[key], abs=1e-5)
    assert max_diff(weights(one_process), weights(tmp_path / "two")) < 1e-6


def test_fsdp_on_two_processes_trains_the_same_and_saves_a_folder_that_loads(data, one_process, tmp_path):
    """FSDP2 (each decoder layer a unit, the EMA kept sharded and gathered at the end) in float32 equals the one
    process run, and a sharded run stopped and continued equals one never stopped; with bf16 compute it stays close
    and its folder loads and draws."""
    torchrun(args(data, tmp_path / "fsdp", "--steps", "3", "--fsdp"))
    assert max_diff(weights(one_process), weights(tmp_path / "fsdp"), skip=NOISE_ONLY) < 1e-6
    assert max_diff(weights(one_process), weights(tmp_path / "fsdp")) < 3e-3  # the key bias: rounding noise
    # stopped after a step (a state: the model and AdamW gathered from their shards, the EMA too), then continued
    stopped = torchrun(args(data, tmp_path / "resumed", "--steps", "3", "--fsdp", "--stop-after", "1"))
    assert "stopped after 1 steps" in stopped.stdout and not (tmp_path / "resumed" / "ema.safetensors").exists()
    torchrun(args(data, tmp_path / "resumed", "--steps", "3", "--fsdp"))
    assert max_diff(weights(tmp_path / "fsdp"), weights(tmp_path / "resumed")) == 0.0
    torchrun(args(data, tmp_path / "fsdp_bf16", "--steps", "3", "--fsdp", "--bf16", "--checkpointing"))
    one = json.loads((one_process / "train_log.json").read_text())["loss"]
    bf16 = json.loads((tmp_path / "fsdp_bf16" / "train_log.json").read_text())["loss"]
    assert bf16["ce"] == pytest.approx(one["ce"], rel=0.02) and bf16["mse"] == pytest.approx(one["mse"], rel=0.02)
    pipe = bagel_lite.load(tmp_path / "fsdp_bf16")
    assert pipe.generate("a blue circle", image_shape=(32, 32), num_timesteps=3, seed=0).image.size == (32, 32)


def run_in_background(argv: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "bagel_lite.training.finetune", *argv]
    return subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_a_run_killed_at_any_moment_resumes_to_the_same_weights(data, tmp_path):
    """SIGKILL three times at random moments while it trains (a state after every step), then the same command until
    it finishes: the weights equal those of a run that was never stopped."""
    steps = ["--steps", "30", "--save-every", "1"]
    finetune(args(data, tmp_path / "whole", *steps))
    out, rng = tmp_path / "killed", random.Random(0)
    state = out.with_name("killed.state")

    def steps_saved() -> int:
        try:
            return len(json.loads((state / "complete.json").read_text())["history"]["ce"])
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return 0

    kills = 0
    for _ in range(3):
        before = steps_saved()
        proc = run_in_background(args(data, out, *steps))
        deadline = time.time() + 120
        while proc.poll() is None and steps_saved() <= before and time.time() < deadline:
            time.sleep(0.02)  # until this run has saved a state of its own
        time.sleep(rng.uniform(0.0, 0.3))  # then a random moment: inside a step, or inside a save
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills == 3 and 0 < steps_saved() < 30
    finetune(args(data, out, *steps))
    assert max_diff(weights(tmp_path / "whole"), weights(out)) == 0.0
    assert not state.exists()  # a finished run leaves no state for the next one to resume


def test_a_save_killed_half_way_leaves_nothing_that_load_accepts(tmp_path):
    """The process dies while writing the weights: the folder is refused by the loader (no ema.safetensors), never
    half-read."""
    script = f"""
import os, signal, safetensors.torch as st
import bagel_lite
from bagel_lite.loading.checkpoint import load_bagel, save_bagel
b = load_bagel({str(TINY)!r})
real = st.save_file
def die_half_way(tensors, path, *a, **k):
    if path.endswith("ema.safetensors"):
        with open(path, "wb") as f:
            f.write(b"half")
        os.kill(os.getpid(), signal.SIGKILL)
    real(tensors, path, *a, **k)
import bagel_lite.loading.checkpoint as c
c.save_file = die_half_way
save_bagel({str(tmp_path / "out")!r}, b.model, b.ae, b.tokenizer)
"""
    done = subprocess.run([sys.executable, "-c", script], env=env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL
    with pytest.raises(CheckpointError):
        bagel_lite.load_bagel(tmp_path / "out")


def test_bad_data_is_refused_naming_the_line_and_the_fix(tmp_path):
    data = write_data(tmp_path / "d", lines=3)
    bad = tmp_path / "d" / "bad.jsonl"
    for line, words in (('{"task": "draw", "image": "0.png"}', "task"),
                        ('{"task": "t2i", "image": "missing.png", "prompt": "x"}', "not found"),
                        ('{"task": "vqa", "image": "0.png", "question": "q"}', "answer"),
                        ("not json", "not JSON")):
        bad.write_text(line + "\n")
        with pytest.raises(SystemExit, match=words) as e:
            finetune(args(bad, tmp_path / "o", "--steps", "1"))
        assert "line 1" in str(e.value)
    with pytest.raises(SystemExit, match="weight"):
        finetune(args(Path(f"{data}:0"), tmp_path / "o", "--steps", "1"))
    # an example over the token budget: found while packing, named by its file and line, with the fix
    with pytest.raises(SystemExit, match=r"data\.jsonl, line \d+: .* --max-tokens 12.*--image-size"):
        finetune([*args(data, tmp_path / "o", "--steps", "1"), "--tokens", "10", "--max-tokens", "12"])
    assert not (tmp_path / "o").exists()  # nothing was written


def test_train_only_the_generation_side(data, tmp_path):
    finetune(args(data, tmp_path / "gen", "--steps", "2", "--train", "generation", "--ema", "0"))
    start, tuned = weights(TINY), weights(tmp_path / "gen")
    changed = {k for k in start if not torch.equal(start[k], tuned[k])}
    assert changed and all(any(p in k for p in ("_moe_gen", "time_embedder", "vae2llm", "llm2vae")) for k in changed)
