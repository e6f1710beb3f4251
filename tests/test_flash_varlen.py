"""The flash-attn path of inference: KeyMask and the variable-length packing, checked on the CPU.

flash-attn itself cannot be installed on this project's machines (no CUDA build, no GPU). What can be checked
everywhere is our side of the contract: the padding dropped, the keys packed row after row, the cu_seqlens,
the causal flag. ``reference_varlen`` computes what flash-attn's documented ``flash_attn_varlen_func`` computes
(per sequence softmax attention, grouped-query heads, causal aligned to the bottom right), one sequence at a
time in plain torch, and the tests route inference through it in place of the CUDA kernel.
"""

from __future__ import annotations

import math

import pytest
import torch

from bagel_lite import micro
from bagel_lite.model import attention
from bagel_lite.model.attention import attend, varlen_attend
from bagel_lite.model.masks import KeyMask, causal_allowed


def reference_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=False):
    """flash_attn_varlen_func's semantics: q (total_q, Hq, d), k/v (total_k, Hkv, d) -> (total_q, Hq, d)."""
    assert cu_seqlens_q.dtype == cu_seqlens_k.dtype == torch.int32
    assert len(cu_seqlens_q) == len(cu_seqlens_k)
    assert int(cu_seqlens_q[-1]) == len(q) and int(cu_seqlens_k[-1]) == len(k)
    assert max_seqlen_q == int(cu_seqlens_q.diff().max()) and max_seqlen_k == int(cu_seqlens_k.diff().max())
    groups = q.shape[1] // k.shape[1]
    out = torch.empty_like(q)
    for i in range(len(cu_seqlens_q) - 1):
        qs = slice(int(cu_seqlens_q[i]), int(cu_seqlens_q[i + 1]))
        ks = slice(int(cu_seqlens_k[i]), int(cu_seqlens_k[i + 1]))
        qi = q[qs]
        ki, vi = k[ks].repeat_interleave(groups, 1), v[ks].repeat_interleave(groups, 1)
        scores = torch.einsum("qhd,khd->hqk", qi, ki) / math.sqrt(q.shape[-1])
        if causal:  # bottom-right: the last query sees every key
            keep = torch.ones(len(qi), len(ki), dtype=torch.bool).tril(len(ki) - len(qi))
            scores = scores.masked_fill(~keep, float("-inf"))
        out[qs] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), vi)
    return out


def test_key_mask_is_the_cache_mask_of_inference():
    causal = KeyMask(torch.ones(1, 7, dtype=torch.bool), 3, causal=True)
    assert torch.equal(causal.dense, causal_allowed(4, 3))
    assert KeyMask(torch.ones(2, 7, dtype=torch.bool), 3, causal=False).dense is None  # nothing to hide
    valid = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 0, 0, 1, 1, 1]], dtype=torch.bool)  # row 1: cache 1, 2 padding
    padded = KeyMask(valid, 3, causal=False)
    assert not padded.dense[1, 0, :, 1:3].any() and padded.dense[1, 0, :, [0, 3, 4, 5]].all()
    assert padded.cu_seqlens_k.tolist() == [0, 6, 10] and padded.max_seqlen_k == 6
    with pytest.raises(ValueError, match="key_valid"):
        KeyMask(torch.ones(7, dtype=torch.bool), 3, causal=True)


@pytest.mark.parametrize("causal", [True, False])
def test_varlen_packing_equals_the_dense_mask(causal):
    torch.manual_seed(0)
    b, hq, hkv, length, cached, d = 3, 4, 2, 5, 6, 8
    q = torch.randn(b, hq, length, d)
    k, v = torch.randn(b, hkv, cached + length, d), torch.randn(b, hkv, cached + length, d)
    valid = torch.ones(b, cached + length, dtype=torch.bool)
    valid[1, 2:cached] = False  # row 1 has a cache of 2, padded to 6
    valid[2, 0:cached] = False  # row 2 has no cache at all
    mask = KeyMask(valid, length, causal)
    assert torch.allclose(varlen_attend(q, k, v, mask, reference_varlen), attend(q, k, v, mask.dense), atol=1e-5)


@pytest.mark.parametrize("causal, length", [(False, 5), (True, 1), (True, 5)])
def test_row_by_row_attention_equals_the_dense_mask(causal, length):
    """Padded rows whose only hidden keys are padding go row by row, unmasked (``rowwise_attend``); a causal
    block of several new tokens keeps the dense mask."""
    torch.manual_seed(0)
    b, hq, hkv, cached, d = 3, 4, 2, 6, 8
    q = torch.randn(b, hq, length, d)
    k, v = torch.randn(b, hkv, cached + length, d), torch.randn(b, hkv, cached + length, d)
    valid = torch.ones(b, cached + length, dtype=torch.bool)
    valid[1, 2:cached] = False
    valid[2, 0:cached] = False
    mask = KeyMask(valid, length, causal)
    assert (mask.rows is None) == (causal and length > 1)
    dense = attend(q, k, v, mask.dense)
    assert torch.allclose(attend(q, k, v, mask), dense, atol=1e-6)
    if mask.rows is not None:
        assert [r.tolist() for r in mask.rows][1] == [0, 1] + list(range(cached, cached + length))
        assert torch.allclose(attention.rowwise_attend(q, k, v, mask), dense, atol=1e-6)


def test_inference_through_the_varlen_kernel_matches_sdpa(monkeypatch):
    pipe = micro.load()
    kw = dict(seed=0, num_timesteps=5, progress=False)
    by_sdpa = pipe.generate("a large red circle on the left", **kw)  # text (causal) + 3 batched CFG branches
    answer = pipe.answer(by_sdpa.image, "what color is the circle?")
    calls = []

    def kernel(*args, **kwargs):
        calls.append(kwargs["causal"])
        return reference_varlen(*args, **kwargs)

    monkeypatch.setattr(attention, "FLASH_VARLEN", kernel)
    monkeypatch.setattr(attention, "flash_supported", lambda q: True)  # as if on a GPU with flash-attn
    by_varlen = pipe.generate("a large red circle on the left", **kw)
    assert True in calls and False in calls  # text segments causal, image blocks and denoising steps not
    assert torch.allclose(by_varlen.latents, by_sdpa.latents, atol=1e-4)
    assert pipe.answer(by_sdpa.image, "what color is the circle?") == answer
