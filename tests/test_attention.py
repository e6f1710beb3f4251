"""Packed attention masks: the rules of BAGEL's training sequences, dense and block-sparse."""

from __future__ import annotations

import pytest
import torch

from bagel_lite.model.attention import attend
from bagel_lite.model.masks import dense_mask, flex_block_mask, sample_allowed


def test_spec_example_causal_full_noise():
    allowed = sample_allowed([5, 3, 4], ["causal", "full", "noise"]).int()
    assert torch.equal(allowed[:5, :5], torch.ones(5, 5, dtype=torch.int).tril())
    assert allowed[:8, 8:].sum() == 0, "nothing outside the noise split may see it"
    assert allowed[5:8, :8].all(), "a full split sees what came before and itself"
    assert allowed[8:].all(), "a noise split sees everything before it and itself"


def test_noise_is_invisible_to_later_tokens():
    allowed = sample_allowed([3, 4, 2], ["causal", "noise", "causal"])
    assert not allowed[7:, 3:7].any()
    assert allowed[7:, :3].all()


def test_samples_are_kept_apart():
    allowed = dense_mask([5, 4], [3, 2, 4], ["causal", "full", "causal"])
    assert not allowed[5:, :5].any() and not allowed[:5, 5:].any()


def test_bad_modes_are_named():
    with pytest.raises(ValueError, match="unknown attention mode 'bidirectional'"):
        sample_allowed([2], ["bidirectional"])
    with pytest.raises(ValueError, match="split lengths"):
        sample_allowed([2, 3], ["causal"])


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_dense_and_block_mask_give_the_same_attention():
    from torch.nn.attention.flex_attention import flex_attention

    # two samples mixing the three modes; lengths cross the 128-token block boundaries
    sample_lens = [150, 170]
    split_lens = [40, 60, 50, 30, 70, 20, 50]
    modes = ["causal", "full", "noise", "causal", "noise", "full", "causal"]
    total = sum(split_lens)
    q, k, v = (torch.randn(1, 4, total, 16) for _ in range(3))
    dense = attend(q, k, v, dense_mask(sample_lens, split_lens, modes)[None, None])
    block = flex_block_mask(sample_lens, split_lens, modes)
    flex = flex_attention(q, k, v, block_mask=block)
    torch.testing.assert_close(flex, dense, atol=1e-5, rtol=1e-5)
    # the block mask skips work: some 128x128 blocks are fully masked
    assert (block.to_dense() == 0).any()


def test_grouped_query_heads_share_kv():
    q = torch.randn(1, 4, 3, 8)
    k, v = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8)
    out = attend(q, k, v)
    ref = attend(q[:, 2:3], k[:, 1:2], v[:, 1:2])  # query head 2 reads KV head 1
    torch.testing.assert_close(out[:, 2:3], ref)
