"""GPU placement, checked without a GPU: the memory estimate, the refusal, and the device map."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bagel_lite.loading.checkpoint import build
from bagel_lite.loading.devices import (
    SAME_DEVICE_AS_EMBEDDINGS,
    GiB,
    MemoryEstimate,
    check_fits,
    device_map,
    estimate_memory,
)
from bagel_lite.model import config


def test_full_model_bf16_weights_are_about_29_gb():
    e = estimate_memory(config.full(), torch.bfloat16)
    assert e.weights == 14_607_260_128 * 2
    assert 0 < e.kv_cache < e.weights and 0 < e.activations < e.weights
    # 56 KiB of keys and values per cached token in bf16 (spec section 14)
    llm = config.full().llm
    assert llm.num_hidden_layers * 2 * llm.num_key_value_heads * llm.head_dim * 2 == 56 * 1024


def test_refuses_clearly_when_it_does_not_fit():
    e = MemoryEstimate(weights=30 * GiB, kv_cache=1 * GiB, activations=2 * GiB)
    with pytest.raises(MemoryError, match=r"needs about 36\.3 GiB.*only 24\.0 GiB is free.*4 bits"):
        check_fits(e, {0: 24 * GiB})
    check_fits(e, {0: 24 * GiB, 1: 24 * GiB})  # two cards together are enough
    with pytest.raises(MemoryError, match="no CUDA device"):
        check_fits(e, {})


def test_device_map_keeps_layers_whole_and_writers_with_the_embedding():
    model, _ = build(config.full(), device="meta")
    dmap = device_map(model, {0: "18GiB", 1: "18GiB", "cpu": "200GiB"})
    layer_keys = [k for k in dmap if k.startswith("language_model.model.layers.")]
    assert all(k.count(".") == 3 for k in layer_keys), "a decoder layer was split across devices"
    assert {dmap[k] for k in layer_keys} >= {0, 1}, "the layers should spread over both GPUs"
    embed = dmap["language_model.model.embed_tokens"]
    for name in SAME_DEVICE_AS_EMBEDDINGS:
        assert {v for k, v in dmap.items() if k == name or k.startswith(name + ".")} == {embed}


def test_quantized_loading_explains_what_it_needs(tmp_path):
    import importlib.util

    from bagel_lite.loading.devices import load_quantized

    with pytest.raises(ValueError, match="quantize='nf8' is unknown"):
        load_quantized(tmp_path, "nf8")
    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(ImportError, match="needs bitsandbytes: pip install bitsandbytes"):
            load_quantized(tmp_path, "nf4")
    elif not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
            load_quantized(tmp_path, "int8")


def test_quantize_refuses_a_device_or_dtype_it_cannot_honour():
    """``load(folder, quantize=...)`` with device="cpu" or a dtype raised nothing and ignored them (issue 24)."""
    from bagel_lite.inference.pipeline import load

    with pytest.raises(ValueError, match="quantize='nf4' spreads the layers.*device='cpu' cannot be honoured"):
        load("any-folder", device="cpu", quantize="nf4")
    with pytest.raises(ValueError, match="quantize='int8' chooses the dtypes itself.*cannot be honoured"):
        load("any-folder", dtype=torch.float16, quantize="int8")


def test_quantized_loading_writes_nothing_into_the_checkpoint_folder(tmp_path, monkeypatch):
    """Offloaded layers go to a temporary (or named) folder, never into the user's checkpoint folder."""
    import importlib.util
    import shutil

    import accelerate.utils
    from helpers import GOLDEN

    from bagel_lite.loading import devices

    folder = tmp_path / "ckpt"
    shutil.copytree(GOLDEN / "tiny_ckpt", folder)
    before = sorted(p.name for p in folder.iterdir())
    seen = {}

    def fake_load(model, config, weights_location, device_map, offload_folder):
        seen["offload"] = offload_folder
        return model

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "bitsandbytes"
                        else real_find_spec(name, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(devices, "free_gpu_memory", lambda: {0: 10**10})
    monkeypatch.setattr(accelerate.utils, "load_and_quantize_model", fake_load)
    monkeypatch.setattr(accelerate.utils, "BnbQuantizationConfig", lambda **kw: kw)
    devices.load_quantized(folder, "nf4")
    assert folder not in Path(seen["offload"]).parents and Path(seen["offload"]).is_dir()
    assert sorted(p.name for p in folder.iterdir()) == before
    devices.load_quantized(folder, "int8", offload_folder=tmp_path / "mine")
    assert seen["offload"] == str(tmp_path / "mine")
