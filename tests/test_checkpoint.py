"""Checkpoint folders: strict loading with errors that say what is wrong, and saving the same format."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import GOLDEN
from safetensors.torch import load_file, save_file

from bagel_lite.loading.checkpoint import CheckpointError, load_bagel, save_bagel


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


# --- issue 14: config and weight problems are CheckpointErrors naming the file and the field ----------------------

def edit_json(path, change):
    import json

    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data)))


@pytest.mark.parametrize("text,match", [
    ("[1, 2]", r"llm_config\.json must hold a JSON object .* but holds list"),
    ("null", r"llm_config\.json must hold a JSON object .* but holds null"),
    ('"hello"', r"llm_config\.json must hold a JSON object .* but holds str"),
])
def test_config_that_is_not_an_object(folder, text, match):
    (folder / "llm_config.json").write_text(text)
    with pytest.raises(CheckpointError, match=match):
        load_bagel(folder)


@pytest.mark.parametrize("file,key,value,match", [
    ("llm_config.json", "num_attention_heads", 0, r"llm_config.json.*num_attention_heads must be an integer >= 1"),
    ("llm_config.json", "hidden_size", -64, r"llm_config\.json .*hidden_size must be an integer >= 1, got -64"),
    ("llm_config.json", "hidden_size", "64", r"llm_config.json.*hidden_size must be an integer >= 1, got '64' \(str\)"),
    ("llm_config.json", "max_position_embeddings", 0, r"llm_config\.json .*max_position_embeddings must be an integer"),
    ("llm_config.json", "use_sliding_window", True, r"llm_config\.json .*use_sliding_window = True is not supported"),
    ("vit_config.json", "num_attention_heads", 0, r"vit_config\.json .*num_attention_heads must be an integer >= 1"),
    ("vit_config.json", "patch_size", 14.5, r"vit_config\.json .*patch_size must be an integer"),
    ("ae_config.json", "scale_factor", 0, r"ae_config\.json .*scale_factor must be a finite number in \[1e-06"),
    ("ae_config.json", "ch", 30, r"ae_config\.json .*multiples of 32"),
    ("ae_config.json", "z_chanels", 16, r"ae_config\.json .*unknown keys \['z_chanels'\]"),
])
def test_bad_config_fields_are_named(folder, file, key, value, match):
    edit_json(folder / file, lambda d: {**d, key: value})
    with pytest.raises(CheckpointError, match=match):
        load_bagel(folder)


@pytest.mark.parametrize("extra,match", [
    ({"connector_act": "relu"}, r"bagel_config.json.*connector_act 'relu' is unknown; use one of \('gelu_pytorch"),
    ({"max_latent_size": 4, "latent_size": 4}, r"bagel_config\.json .*unknown keys \['latent_size'\]"),
    ({"interpolate_pos": "no"}, r"bagel_config\.json .*interpolate_pos must be True or False"),
])
def test_bad_bagel_config_is_named(folder, extra, match):
    import json

    (folder / "bagel_config.json").write_text(json.dumps(extra))
    with pytest.raises(CheckpointError, match=match):
        load_bagel(folder)


def test_unknown_llm_config_key_is_reported_not_dropped(folder):
    edit_json(folder / "llm_config.json", lambda d: {**d, "hiden_size": 96})
    with pytest.warns(UserWarning, match=r"llm_config\.json: keys \['hiden_size'\] are unknown"):
        load_bagel(folder)


def test_integer_weights_are_refused(folder):
    rewrite(folder / "ema.safetensors", lambda s: s.update({"llm2vae.bias": s["llm2vae.bias"].to(torch.int32)}))
    with pytest.raises(CheckpointError, match=r"ema\.safetensors .*llm2vae\.bias is stored as I32"):
        load_bagel(folder)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_weights_are_refused(folder, bad):
    def poison(s):
        s["decoder.conv_out.bias"][1] = bad

    rewrite(folder / "ae.safetensors", poison)
    with pytest.raises(CheckpointError, match=r"ae\.safetensors .*decoder\.conv_out\.bias holds NaN or infinite"):
        load_bagel(folder)


@pytest.mark.parametrize("file,content,match", [
    ("vocab.json", b'{"a": 1,', r"vocab\.json is not valid JSON"),
    ("vocab.json", b"[1, 2]", r"vocab\.json must hold a JSON object"),
    ("merges.txt", b"\xff\xfe\x00garbage", r"merges\.txt could not be read as text"),
    ("tokenizer.json", b"{not json", r"tokenizer\.json is not valid JSON"),
    ("vocab.json", b'{"a": "not an id"}', r"the tokenizer files in .* could not be loaded"),
])
def test_corrupt_tokenizer_files_are_named(folder, file, content, match):
    (folder / file).write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_bagel(folder)
