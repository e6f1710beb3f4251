"""The full-size BAGEL-7B-MoT, built on the meta device, has exactly the official keys and shapes."""

from __future__ import annotations

import math

import torch
from helpers import REFERENCE

from bagel_lite.loading.checkpoint import build
from bagel_lite.model import config
from bagel_lite.model.autoencoder import AutoEncoder


def manifest(name):
    rows = (line.rstrip("\n").split("\t") for line in (REFERENCE / name).read_text().splitlines() if line.strip())
    return {key: tuple(int(d) for d in shape.split("x")) for key, shape in rows}


def shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_full_model_has_the_official_keys_and_shapes():
    model, ae = build(config.full(), device="meta")
    assert all(p.is_meta for p in model.parameters()), "the full model must not allocate memory"
    expected = manifest("bagel-7b-mot.ema.keys.tsv")
    got = shapes(model)
    assert sorted(set(expected) - set(got)) == [], "keys missing from the model"
    assert sorted(set(got) - set(expected)) == [], "keys the official checkpoint does not have"
    assert got == expected
    assert shapes(ae) == manifest("flux-ae.keys.tsv")


def test_full_model_parameter_counts():
    model, ae = build(config.full(), device="meta")
    counts = model.num_parameters()
    counts["autoencoder"] = sum(p.numel() for p in ae.parameters())
    for name, n in counts.items():
        print(f"{name:>28}: {n:>16,}")
    assert counts["total"] == sum(math.prod(s) for s in manifest("bagel-7b-mot.ema.keys.tsv").values())
    assert counts["total"] == 14_607_260_128
    assert counts["generation_expert"] == 6_525_628_928
    assert counts["autoencoder"] == 83_819_683
    # one token passes through one expert: about half of the language model
    assert counts["active_understanding_token"] < 0.55 * counts["language_model"]


def test_tiny_preset_builds_and_runs_one_step():
    model, ae = build(config.tiny())
    x = torch.randn(1, 5, model.config.llm.hidden_size)
    hidden, kvs = model.hidden_states(x, None, torch.arange(5)[None], None)
    assert hidden.shape == x.shape and len(kvs) == model.config.llm.num_hidden_layers
    assert ae.decode(torch.randn(1, 16, 2, 3)).shape == (1, 3, 16, 24)


def test_meta_autoencoder_is_flux_sized():
    with torch.device("meta"):
        ae = AutoEncoder(config.AEConfig())
    assert sum(p.numel() for p in ae.encoder.parameters()) == 34_274_208
    assert sum(p.numel() for p in ae.decoder.parameters()) == 49_545_475
