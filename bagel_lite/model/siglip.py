"""SigLIP-NaViT: the vision encoder BAGEL uses to *understand* images.

A plain pre-LayerNorm ViT with two NaViT twists:

* images of different sizes are packed into one sequence of patch tokens; attention never crosses from
  one image to another (variable-length attention: one attention call per image here);
* each patch gets its position from a fixed 70x70 table by flattened id (``patchify.position_ids``),
  through SigLIP's *learned* table — or, in the switched-off variant, through 2D RoPE in every layer.

The ``MLPConnector`` then maps the ViT width (1152) to the LLM width (3584). Module names mirror the
checkpoint keys ``vit_model.vision_model.*`` and ``connector.*``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ViTConfig
from .positions import RotaryEmbedding2D


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


class SiglipVisionEmbeddings(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        patch_dim = cfg.patch_size**2 * cfg.num_channels  # 588
        # Stored as a Linear on patchified pixels (equal to the original stride-14 Conv2d).
        self.patch_embedding = nn.Linear(patch_dim, cfg.hidden_size)
        self.position_embedding = None if cfg.rope else nn.Embedding(cfg.num_patches_per_side**2, cfg.hidden_size)

    def forward(self, patches: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        h = self.patch_embedding(patches)  # (num_patches, hidden)
        if self.position_embedding is not None:
            h = h + self.position_embedding(position_ids)
        return h


class SiglipAttention(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x, seq_lens: list[int], position_ids=None, rope: RotaryEmbedding2D | None = None):
        n = x.shape[0]
        q = self.q_proj(x).view(n, self.num_heads, self.head_dim)  # (N, heads, head_dim)
        k = self.k_proj(x).view(n, self.num_heads, self.head_dim)
        v = self.v_proj(x).view(n, self.num_heads, self.head_dim)
        if rope is not None:
            q, k = rope(q, position_ids), rope(k, position_ids)
        outs = []
        for qi, ki, vi in zip(q.split(seq_lens), k.split(seq_lens), v.split(seq_lens)):  # one image at a time
            qi, ki, vi = (t.transpose(0, 1)[None] for t in (qi, ki, vi))  # (1, heads, n_i, head_dim)
            outs.append(F.scaled_dot_product_attention(qi, ki, vi)[0].transpose(0, 1))  # (n_i, heads, hd)
        out = torch.cat(outs).reshape(n, -1)  # (N, hidden)
        return self.out_proj(out)


class SiglipMLP(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x):
        return self.fc2(gelu_tanh(self.fc1(x)))


class SiglipEncoderLayer(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = SiglipAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = SiglipMLP(cfg)

    def forward(self, x, seq_lens, position_ids=None, rope=None):
        x = x + self.self_attn(self.layer_norm1(x), seq_lens, position_ids, rope)
        return x + self.mlp(self.layer_norm2(x))


class SiglipEncoder(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))


class SiglipNaViTTransformer(nn.Module):
    """Patch embedding, the encoder layers (attention within each image only) and the final LayerNorm."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.embeddings = SiglipVisionEmbeddings(cfg)
        self.encoder = SiglipEncoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.rope = RotaryEmbedding2D(cfg.head_dim, cfg.num_patches_per_side) if cfg.rope else None

    def forward(self, patches: torch.Tensor, position_ids: torch.Tensor, seq_lens: list[int]) -> torch.Tensor:
        """patches: (N, 588) of all images packed; position_ids: (N,); seq_lens: tokens per image."""
        if sum(seq_lens) != patches.shape[0]:
            raise ValueError(f"seq_lens add up to {sum(seq_lens)} but {patches.shape[0]} patches were given")
        h = self.embeddings(patches, position_ids)  # (N, hidden)
        for layer in self.encoder.layers:
            h = layer(h, seq_lens, position_ids, self.rope)
        return self.post_layernorm(h)  # (N, hidden)


class SiglipNaViT(nn.Module):
    """SigLIP over NaViT-packed patches of images of any size (not transformers' ``SiglipVisionModel``, which
    takes fixed-size pixel batches). This wrapper gives the checkpoint's ``vision_model.`` key prefix."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.vision_model = SiglipNaViTTransformer(cfg)

    def forward(self, patches, position_ids, seq_lens):
        return self.vision_model(patches, position_ids, seq_lens)


class MLPConnector(nn.Module):
    """ViT features -> LLM embeddings: ``fc2(gelu_tanh(fc1(x)))``, 1152 -> 3584 -> 3584."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.fc2 = nn.Linear(out_dim, out_dim)

    def forward(self, x):
        return self.fc2(gelu_tanh(self.fc1(x)))
