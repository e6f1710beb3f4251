"""Checkpoint folders: strict loading with errors that say what is wrong, and saving the same format."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import GOLDEN
from safetensors.torch import load_file, save_file

from bagel_lite.checkpoint import CheckpointError, load_bagel, save_bagel


@pytest.fixture
def folder(tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(GOLDEN / "tiny_ckpt", dst)
    return dst


def rewrite(path, change):
    state = load_file(path)
    change(state)
    save_file(state, path)


def test_missing_file_is_named(folder):
    (folder / "ae.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"lacks ae\.safetensors"):
        load_bagel(folder)


def test_missing_tokenizer_file_is_named(folder):
    (folder / "merges.txt").unlink()
    with pytest.raises(CheckpointError, match=r"lacks merges\.txt"):
        load_bagel(folder)


def test_missing_key_is_named(folder):
    rewrite(folder / "ema.safetensors", lambda s: s.pop("llm2vae.bias"))
    with pytest.raises(CheckpointError, match=r"ema\.safetensors.*missing keys: llm2vae\.bias"):
        load_bagel(folder)


def test_extra_key_is_named(folder):
    rewrite(folder / "ema.safetensors", lambda s: s.update({"extra.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected keys: extra\.weight"):
        load_bagel(folder)


def test_wrong_shape_is_named(folder):
    rewrite(folder / "ae.safetensors", lambda s: s.update({"decoder.conv_out.bias": torch.zeros(4)}))
    with pytest.raises(CheckpointError, match=r"decoder\.conv_out\.bias is \[4\], expected \[3\]"):
        load_bagel(folder)


def test_truncated_file_is_named(folder):
    path = folder / "ema.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"ema\.safetensors could not be read.*truncated or corrupt"):
        load_bagel(folder)


def test_config_that_does_not_match_the_weights(folder):
    cfg = (folder / "llm_config.json").read_text().replace('"hidden_size": 64', '"hidden_size": 96')
    (folder / "llm_config.json").write_text(cfg)
    with pytest.raises(CheckpointError, match="wrong shapes"):
        load_bagel(folder)


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_bagel(tmp_path / "nope")


def test_save_then_load_gives_the_same_model(golden_bagel, tmp_path):
    b = golden_bagel
    out = save_bagel(tmp_path / "copy", b.model, b.ae, b.tokenizer)
    again = load_bagel(out)
    assert again.config == b.config
    for (k1, v1), (k2, v2) in zip(b.model.state_dict().items(), again.model.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    assert again.tokenizer.encode("a red circle") == b.tokenizer.encode("a red circle")
    assert again.special == b.special
