"""Patchification and position encodings, checked against the spec's worked values and their properties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bagel_lite.model.patchify import (
    patchify,
    position_ids,
    position_ids_extrapolate,
    position_ids_interpolate,
    unpatchify,
)
from bagel_lite.model.positions import RotaryEmbedding2D, apply_rope, rope_cos_sin, sincos_2d_table
from bagel_lite.model.timestep import timestep_features


def test_patchify_plus_linear_equals_strided_conv():
    image = torch.randn(3, 28, 42)
    conv = torch.nn.Conv2d(3, 8, 14, stride=14)
    weight = conv.weight.permute(0, 2, 3, 1).reshape(8, 14 * 14 * 3)  # (row, col, channel) order
    tokens = patchify(image, 14) @ weight.T + conv.bias  # (6, 8)
    expected = conv(image[None])[0].flatten(1).T  # (6, 8), raster order
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=1e-5)


def test_unpatchify_inverts_patchify():
    latent = torch.randn(16, 8, 12)
    tokens = patchify(latent, 2)
    assert tokens.shape == (24, 64)
    assert torch.equal(tokens[5], latent[:, 0:2, 10:12].permute(1, 2, 0).flatten())
    assert torch.equal(unpatchify(tokens, 4, 6, 2, 16), latent)


def test_position_id_examples_from_the_spec():
    assert position_ids_extrapolate(28, 42, 14, 70).tolist() == [0, 1, 2, 70, 71, 72]
    assert position_ids_interpolate(28, 42, 14, 70).tolist() == [0, 23, 46, 2450, 2473, 2496]


def test_position_ids_refuse_bad_sizes():
    with pytest.raises(ValueError, match="smaller than one 14x14 patch"):
        position_ids(10, 100, 14, 70)
    with pytest.raises(ValueError, match="more than the position table's 64 per side"):
        position_ids(16, 1040, 16, 64)


def test_sincos_check_value_from_the_spec():
    row, col = 1, 2
    got = sincos_2d_table(4, 8)[row * 4 + col]
    expected = torch.tensor([math.sin(2), math.sin(0.02), math.cos(2), math.cos(0.02),
                             math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)])
    torch.testing.assert_close(got, expected)


def test_rope_scores_depend_only_on_relative_position():
    q, k = torch.randn(64), torch.randn(64)

    def score(m, n):
        cos, sin = rope_cos_sin(torch.tensor([m, n]), 64, 1e6, torch.float32)
        return (apply_rope(q, cos[0], sin[0]) @ apply_rope(k, cos[1], sin[1])).item()

    assert score(3, 1) == pytest.approx(score(12, 10), rel=1e-4)
    assert score(3, 1) != pytest.approx(score(3, 2), rel=1e-4)


def test_2d_rope_is_relative_in_rows_and_columns():
    rope = RotaryEmbedding2D(head_dim=8, max_side=10)
    q, k = torch.randn(1, 1, 8), torch.randn(1, 1, 8)

    def score(a, b):  # a, b: (row, col)
        qa = rope(q, torch.tensor([a[0] * 10 + a[1]]))
        kb = rope(k, torch.tensor([b[0] * 10 + b[1]]))
        return (qa * kb).sum().item()

    assert score((2, 3), (1, 1)) == pytest.approx(score((6, 7), (5, 5)), rel=1e-4)  # same (dr, dc)
    assert score((2, 3), (1, 1)) != pytest.approx(score((2, 3), (1, 2)), rel=1e-4)


def test_timestep_features_cos_first():
    f = timestep_features(torch.tensor([0.0]))
    assert torch.equal(f[0, :128], torch.ones(128)) and torch.equal(f[0, 128:], torch.zeros(128))


def test_gelu_tanh_formula():
    x = torch.linspace(-3, 3, 7)
    ref = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    torch.testing.assert_close(F.gelu(x, approximate="tanh"), ref)
