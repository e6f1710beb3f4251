"""Attention masks: who may look at whom, in a packed training sequence and in inference over a KV cache.

In training, BAGEL packs many samples ("documents") into one long sequence. Each sample is cut into
*splits*, and each split has a mode:

* ``causal`` — a text segment: each token sees earlier tokens.
* ``full``   — a clean image (ViT block or clean VAE block): its tokens see each other both ways.
* ``noise``  — a noisy VAE image being denoised: it sees everything before it and itself, and **no other
  token may see it** (otherwise later text would read the answer off the noise).

Tokens never see other samples. Three equivalent ways to express this are built here:

* ``dense_mask`` — an explicit (L, L) matrix, used with ``torch.nn.functional.scaled_dot_product_attention``;
* ``flex_block_mask`` — the same rule as a predicate for ``torch.nn.attention.flex_attention``, which skips
  whole 128x128 blocks that are fully masked (the GPU training path);
* ``PackedMask`` — each sample's own mask on a (samples, longest) grid of the packed tokens (what training
  runs: no scores computed between samples).

In inference, new tokens attend to a KV cache. ``KeyMask`` keeps that mask in the form flash-attn's
variable-length kernel takes (per row: how many valid keys, and whether the new tokens are causal), and as a
boolean matrix for SDPA. The attention call that reads these masks is ``attention.attend``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

ATTN_MODES = ("causal", "full", "noise")


def check_splits(split_lens: Sequence[int], attn_modes: Sequence[str]):
    if len(split_lens) != len(attn_modes):
        raise ValueError(f"{len(split_lens)} split lengths but {len(attn_modes)} attention modes")
    for mode in attn_modes:
        if mode not in ATTN_MODES:
            raise ValueError(f"unknown attention mode {mode!r}; use one of {ATTN_MODES}")


def sample_allowed(split_lens: Sequence[int], attn_modes: Sequence[str]) -> torch.Tensor:
    """Boolean (L, L) matrix for one sample: ``allowed[i, j]`` is True when query i may attend to key j."""
    check_splits(split_lens, attn_modes)
    length = sum(split_lens)
    allowed = torch.zeros(length, length, dtype=torch.bool)
    start = 0
    for size, mode in zip(split_lens, attn_modes):
        end = start + size
        allowed[start:end, :start] = True  # every split sees all earlier splits ...
        block = torch.ones(size, size, dtype=torch.bool)
        allowed[start:end, start:end] = block.tril() if mode == "causal" else block  # ... and itself
        start = end
    start = 0
    for size, mode in zip(split_lens, attn_modes):  # second pass: hide noise splits from everyone else
        end = start + size
        if mode == "noise":
            allowed[:, start:end] = False
            allowed[start:end, start:end] = True
        start = end
    return allowed


def samples_of(sample_lens: Sequence[int], split_lens: Sequence[int], attn_modes: Sequence[str]):
    """Group the splits of a packed sequence by sample: yields (split_lens, attn_modes) of each sample."""
    if sum(sample_lens) != sum(split_lens):
        raise ValueError(f"sample lengths add up to {sum(sample_lens)} but split lengths to {sum(split_lens)}")
    i = 0
    for sample_len in sample_lens:
        lens, modes = [], []
        while sum(lens) < sample_len:
            lens.append(split_lens[i])
            modes.append(attn_modes[i])
            i += 1
        if sum(lens) != sample_len:
            raise ValueError(f"splits do not line up with a sample of length {sample_len}")
        yield lens, modes


def dense_mask(sample_lens: Sequence[int], split_lens: Sequence[int], attn_modes: Sequence[str]) -> torch.Tensor:
    """Boolean (L, L) mask of a packed sequence of several samples (block diagonal over samples).

    ``split_lens`` / ``attn_modes`` list the splits of all samples in order; ``sample_lens`` groups them.
    """
    return torch.block_diag(*(sample_allowed(lens, modes) for lens, modes in samples_of(sample_lens, split_lens,
                                                                                       attn_modes)))


def token_labels(sample_lens: Sequence[int], split_lens: Sequence[int], attn_modes: Sequence[str], device=None):
    """Per-token integer labels the block-mask predicate reads: sample id, full/noise split id, noise split id.

    Split ids count over the whole packed batch; -1 marks "not such a split". Each is (L,) int64.
    """
    check_splits(split_lens, attn_modes)
    sample_id = torch.repeat_interleave(torch.arange(len(sample_lens)), torch.tensor(list(sample_lens)))
    sizes = torch.tensor(list(split_lens))
    split_index = torch.repeat_interleave(torch.arange(len(split_lens)), sizes)  # (L,)
    is_full_or_noise = torch.tensor([m != "causal" for m in attn_modes])[split_index]
    is_noise = torch.tensor([m == "noise" for m in attn_modes])[split_index]
    full_noise_id = torch.where(is_full_or_noise, split_index, -1)
    noise_id = torch.where(is_noise, split_index, -1)
    return sample_id.to(device), full_noise_id.to(device), noise_id.to(device)


def mask_predicate(sample_id: torch.Tensor, full_noise_id: torch.Tensor, noise_id: torch.Tensor):
    """The packed-attention rule as a flex-attention ``mask_mod(b, h, q, kv) -> bool``."""

    def mask_mod(b, h, q, kv):
        causal = q >= kv
        same_block = (full_noise_id[q] == full_noise_id[kv]) & (full_noise_id[q] >= 0)
        hidden_noise = (noise_id[kv] >= 0) & (noise_id[q] != noise_id[kv])
        same_sample = sample_id[q] == sample_id[kv]
        return (causal | same_block) & ~hidden_noise & same_sample

    return mask_mod


def flex_block_mask(sample_lens, split_lens, attn_modes, device="cpu", block_size: int = 128):
    """A flex-attention ``BlockMask`` equal to ``dense_mask`` (blocks of ``block_size`` tokens)."""
    from torch.nn.attention.flex_attention import create_block_mask

    length = sum(split_lens)
    mask_mod = mask_predicate(*token_labels(sample_lens, split_lens, attn_modes, device=device))
    return create_block_mask(mask_mod, B=None, H=None, Q_LEN=length, KV_LEN=length, device=device,
                             BLOCK_SIZE=block_size)


class PackedMask:
    """The packed-sequence mask, sample by sample (what the official trainer does with one SDPA call per
    sample): ``grid`` places the tokens of a packed sequence on a (samples, longest) grid, ``masks`` holds each
    sample's own (longest x longest) mask and ``valid`` the real slots. ``attention.attend`` gathers, attends
    and scatters back: the same result as the dense (L, L) mask, without computing the scores between samples
    that the mask would throw away.
    """

    def __init__(self, sample_lens, split_lens, attn_modes, device=None):
        self.length = sum(sample_lens)
        longest = max(sample_lens)
        grid = torch.zeros(len(sample_lens), longest, dtype=torch.long)  # (S, longest): packed index per slot
        valid = torch.zeros(len(sample_lens), longest, dtype=torch.bool)
        masks = torch.zeros(len(sample_lens), 1, longest, longest, dtype=torch.bool)
        start = 0
        for s, (lens, modes) in enumerate(samples_of(sample_lens, split_lens, attn_modes)):
            n = sum(lens)
            grid[s, :n] = torch.arange(start, start + n)
            valid[s, :n] = True
            masks[s, 0, :n, :n] = sample_allowed(lens, modes)
            masks[s, 0, n:, n:] = torch.eye(longest - n, dtype=torch.bool)  # padding rows see themselves
            start += n
        self.grid, self.valid, self.masks = grid.to(device), valid.to(device), masks.to(device)


def causal_allowed(num_cached: int, num_new: int, device=None) -> torch.Tensor:
    """(1, 1, new, cached + new) mask, causal aligned to the bottom right: new token i sees the whole cache
    and new tokens 0..i. (SDPA's ``is_causal`` aligns top-left and would hide the cache.)"""
    return torch.ones(num_new, num_cached + num_new, dtype=torch.bool, device=device).tril(num_cached)[None, None]


class KeyMask:
    """Which keys the L new tokens of each batch row may see, when keys = [the row's cache (padded), new tokens].

    key_valid: (B, T + L) bool on the CPU, False for padding; causal: new token i sees the valid cache and new
    tokens 0..i (aligned to the bottom right, as flash-attn aligns a causal mask when queries are fewer than
    keys), else all valid keys. The lengths are read on the CPU (no device sync on a token step); the masks
    then move to ``device``. Built once per context update (or per generation), reused by every layer and step.
    """

    def __init__(self, key_valid: torch.Tensor, num_new: int, causal: bool, device=None):
        if key_valid.ndim != 2 or key_valid.shape[1] < num_new:
            raise ValueError(f"key_valid must be (batch, cached + {num_new}), got {tuple(key_valid.shape)}")
        key_valid = key_valid.cpu()
        self.num_new, self.causal = num_new, causal
        cached = key_valid.shape[1] - num_new
        lens = key_valid.sum(1)  # (B,) valid keys per row
        self.max_seqlen_k = int(lens.max())
        self.cu_seqlens_k = F.pad(lens.cumsum(0), (1, 0)).to(torch.int32).to(device)  # (B + 1,) row starts
        # The same rule as a boolean (B, 1, L, T + L) mask for SDPA; None (no mask at all) when every key is
        # visible to every new token: nothing padded, and not causal or a single new token.
        if bool(key_valid.all()) and (not causal or num_new == 1):
            self.dense = None
        else:
            dense = key_valid[:, None, None, :].expand(-1, 1, num_new, -1)
            self.dense = (dense & causal_allowed(cached, num_new) if causal else dense).to(device)
        # When every new token sees every valid key of its row (padding is the only thing hidden), each row can
        # be attended on its own over its valid keys, with no mask: ``rows[b]`` indexes row b's keys.
        self.rows = None
        if self.dense is not None and (not causal or num_new == 1):
            self.rows = [row.nonzero()[:, 0].to(device) for row in key_valid]  # (valid keys of row b,) each
        self.key_valid = key_valid.to(device)
