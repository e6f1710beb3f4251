"""The attention call of the package: softmax attention with grouped-query heads, under any mask of
``masks.py``.

``attend`` takes a boolean mask (or none), a ``PackedMask`` (a packed training sequence, attended sample by
sample) or a ``KeyMask`` (new tokens after a KV cache). On a GPU, with flash-attn installed and a half
precision, a ``KeyMask`` goes through ``flash_attn_varlen_func`` — as the official inference does; everything
else through ``torch.nn.functional.scaled_dot_product_attention`` (SDPA).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from .masks import KeyMask, PackedMask


def _import_flash_varlen():
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:  # the optional .[gpu] extra is not installed
        return None
    return flash_attn_varlen_func


FLASH_VARLEN = _import_flash_varlen()


def flash_supported(q: torch.Tensor) -> bool:
    """flash-attn runs on CUDA tensors in float16 / bfloat16, and only when it is installed."""
    return FLASH_VARLEN is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)


def varlen_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: KeyMask, kernel) -> torch.Tensor:
    """Attention through a variable-length kernel with flash-attn's signature: the padding is dropped, every
    row's keys are packed one after another, and ``cu_seqlens`` say where each row starts.

    q: (B, Hq, L, d); k, v: (B, Hkv, T + L, d). Returns (B, Hq, L, d). The kernel shares KV heads among query
    heads itself (grouped-query attention).
    """
    b, hq, length, d = q.shape
    q_packed = q.transpose(1, 2).reshape(b * length, hq, d)  # (B * L, Hq, d): every new token is a query
    k_packed = k.transpose(1, 2)[mask.key_valid]  # (valid keys of all rows, Hkv, d)
    v_packed = v.transpose(1, 2)[mask.key_valid]
    cu_seqlens_q = torch.arange(0, (b + 1) * length, length, dtype=torch.int32, device=q.device)  # (B + 1,)
    out = kernel(q_packed, k_packed, v_packed, cu_seqlens_q, mask.cu_seqlens_k, length,
                 mask.max_seqlen_k, causal=mask.causal)  # (B * L, Hq, d)
    return out.view(b, length, hq, d).transpose(1, 2)


def packed_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: PackedMask) -> torch.Tensor:
    """Attention over a packed sequence, sample by sample (what the official trainer does with one SDPA call
    per sample): the tokens are gathered into the mask's (samples, longest) grid, attended with each sample's
    own mask, and scattered back. q: (1, Hq, L, d); k, v: (1, Hkv, L, d). Returns (1, Hq, L, d)."""
    def per_sample(t):  # (1, H, L, d) -> (S, H, longest, d)
        return t[0][:, mask.grid].transpose(0, 1)

    out = attend(per_sample(q), per_sample(k), per_sample(v), mask.masks)  # (S, Hq, longest, d)
    packed = out.transpose(0, 1)[:, mask.valid]  # (Hq, L, d): the valid slots, in packed order
    return packed[None]


def rowwise_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: KeyMask) -> torch.Tensor:
    """Padded rows whose only hidden keys are padding (the guidance branches of a denoising step), one row at
    a time over its own valid keys and without a mask: the variable-length kernel's work, done by SDPA.
    Hiding keys with a mask would compute their scores anyway and take SDPA's slower masked path (on the CPU,
    one thread, a 512x512 text-to-image run: 1.16 s of attention batched and masked, 0.80 s row by row). Each
    row's keys are gathered (a copy of its cache, small beside the attention over it).

    q: (B, Hq, L, d); k, v: (B, Hkv, T + L, d). Returns (B, Hq, L, d)."""
    return torch.cat([attend(q[b:b + 1], k[b:b + 1, :, keys], v[b:b + 1, :, keys])  # (1, Hq, L, d)
                      for b, keys in enumerate(mask.rows)])


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed=None) -> torch.Tensor:
    """Softmax attention with grouped-query heads.

    q: (B, Hq, Lq, d); k, v: (B, Hkv, Lk, d) with Hq a multiple of Hkv (query head j reads KV head
    j // (Hq/Hkv)); allowed: boolean, broadcastable to (B, Hq, Lq, Lk), True = may attend, or None for
    full attention, or a ``PackedMask``, or a ``KeyMask`` (flash-attn's variable-length kernel on a GPU when
    installed, else SDPA). Returns (B, Hq, Lq, d). Scale 1/sqrt(d).
    """
    if isinstance(allowed, PackedMask):
        return packed_attend(q, k, v, allowed)
    if isinstance(allowed, KeyMask):
        if flash_supported(q):
            return varlen_attend(q, k, v, allowed, FLASH_VARLEN)
        if allowed.rows is not None:
            return rowwise_attend(q, k, v, allowed)
        allowed = allowed.dense
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)  # (B, Hq, Lk, d)
        v = v.repeat_interleave(groups, dim=1)
    if q.is_cuda and q.shape[2] == 1:  # writing text: one query against a cache one key longer every token
        with sdpa_kernel(ONE_QUERY_KERNELS):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


# cuDNN's attention (PyTorch's first choice on Hopper GPUs) builds an execution plan for every new shape: about
# 3 ms of CPU per call, measured on an H200, when the key length grows by one each token (84 ms a token over
# 28 layers). A denoising step repeats one shape, so there the plan is built once and cuDNN stays the best.
ONE_QUERY_KERNELS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
