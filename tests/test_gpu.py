"""The full-size GPU benchmark and the GPU-only code paths.

On a machine without CUDA (CI) the benchmark runs as a dry run on the tiny config, and the tests marked
``needs_cuda`` are skipped; on a GPU machine they check the paths the benchmark timed.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from helpers import REPO

from bagel_lite.inference.pipeline import Pipeline
from bagel_lite.micro import CHECKPOINT
from bagel_lite.model import attention
from bagel_lite.model.qwen2_mot import Routing, by_expert

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message seen on a machine without a GPU")


def test_benchmark_dry_run_on_the_cpu(tmp_path):
    out = tmp_path / "result.json"
    cmd = [sys.executable, str(REPO / "benchmarks/gpu_full_size.py"), "--config", "tiny", "--device", "cpu",
           "--size", "64", "--steps", "3", "--tokens", "4", "--folder", str(tmp_path / "folder"), "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1",
                                                                                 "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-2000:]
    last = json.loads(run.stdout.strip().splitlines()[-1])
    assert last == json.loads(out.read_text())
    for phase in ("t2i", "edit", "understand", "from_folder_cpu"):
        assert "error" not in last[phase], last[phase]
    assert last["t2i"]["steps"] == 2 and last["t2i"]["finite"] and last["edit"]["finite"]
    assert last["understand"]["tokens"] >= 1
    assert last["from_folder_cpu"]["t2i"]["finite"]
    assert last["environment"]["attention_path"] in ("SDPA", "flash-attn varlen")


def test_routing_found_once_equals_the_boolean_mask():
    gen_mask = torch.tensor([[False, True, True, False], [True, True, True, True]])
    x = torch.randn(2, 4, 6)

    def und(a):
        return a * 2

    def gen(a):
        return a[..., :3] - 1

    def und3(a):
        return a[..., :3] + 5

    route = Routing.of(gen_mask)
    assert route.und.tolist() == [0, 3] and route.gen.tolist() == [1, 2, 4, 5, 6, 7]
    out = by_expert(x, route, und3, gen)  # (2, 4, 3): experts may change the trailing shape
    assert torch.equal(out[gen_mask], x[gen_mask][..., :3] - 1)
    assert torch.equal(out[~gen_mask], x[~gen_mask][..., :3] + 5)
    assert torch.equal(by_expert(x, gen_mask, und3, gen), out)
    assert torch.equal(by_expert(x, Routing.of(torch.zeros(2, 4, dtype=torch.bool)), und, gen), x * 2)
    assert torch.equal(by_expert(x, Routing.of(torch.ones(2, 4, dtype=torch.bool)), und, gen), x[..., :3] - 1)


@no_cuda
def test_asking_for_a_gpu_without_one_says_so():
    with pytest.raises(RuntimeError, match="no CUDA device"):
        Pipeline.from_folder(CHECKPOINT, device="cuda")


@needs_cuda
def test_micro_model_on_the_gpu_keeps_the_autoencoder_beside_it():
    pipe = Pipeline.from_folder(CHECKPOINT, device="cuda")
    assert next(pipe.ae.parameters()).is_cuda and pipe.dtype == torch.bfloat16
    out = pipe.generate("a red circle on the left", image_shape=(64, 64), seed=0, progress=False)
    assert torch.isfinite(out.latents).all() and out.image.size == (64, 64)


@needs_cuda
def test_one_query_attention_on_the_gpu_equals_the_math_kernel():
    q = torch.randn(1, 8, 1, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 2, 300, 64, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, 2, 300, 64, device="cuda", dtype=torch.bfloat16)
    got = attention.attend(q, k, v, None)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.float(), k.repeat_interleave(4, 1).float(), v.repeat_interleave(4, 1).float())
    assert torch.allclose(got.float(), ref, atol=2e-2)
