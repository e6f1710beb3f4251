"""How much memory per GPU a BAGEL training run needs, part by part, before anything is loaded.

A ``TrainPlan`` says what trains and how (dtypes, optimiser, EMA, sharding over GPUs, activation checkpointing,
the packed token budget); ``plan_memory`` turns it into bytes per GPU from the model's real shapes, counted on
the meta device (no memory, no download); ``check_plan`` refuses a plan that does not fit with a message that
names the biggest parts and the single changes the planner itself verified would fit.

What is counted, per GPU (n = parameters of a part, f = the sharding factor, w = bytes of the weights' dtype, b =
bytes of the compute dtype, r = bytes of the residual stream; b = r = w unless a bf16 compute dtype runs over
float32 weights: FSDP's mixed precision casts the parameters, so r = b = 2; autocast casts only the matmuls'
inputs, so r = w = 4 and b = 2):

* **weights**: every parameter of ``Bagel``, ``n * w``, trainable and frozen apart; divided by f under FSDP
  (FSDP shards frozen parameters too). The FLUX **autoencoder** is always frozen, float32 and replicated (the
  official trainer keeps it outside FSDP): 83.8 M parameters = 0.31 GiB.
* **gradients**: one per trainable parameter in the weights' dtype, ``n * w / f``.
* **master weights**: with bf16 weights, a float32 copy of every trainable parameter that the optimiser updates,
  ``4 n / f`` (none when the weights are float32 already). FSDP's mixed precision stores the same thing as
  float32 sharded parameters and float32 sharded gradients: 4 + 4 bytes instead of 2 + 2 + 4; the 16 bytes per
  trainable parameter of bf16 + master + AdamW are the same.
* **optimizer state**, per trainable parameter: ``adamw`` keeps two moments (``exp_avg``, ``exp_avg_sq``) in the
  dtype of the parameters it updates: 2 x 4 = 8 bytes with master weights or float32 weights, 2 x 2 = 4 with
  bf16 weights and no master; plus a float32 ``step`` per tensor. ``adamw8bit`` (bitsandbytes) keeps two uint8
  moments (2 bytes) plus a float32 scale per 256 values per moment (8 / 256 bytes) and two 256-entry quantile
  maps per tensor; tensors under 4,096 values keep float32 moments (8 bytes). ``sgd`` keeps one momentum buffer
  (4 bytes with master weights). All divided by f.
* **EMA**: a moving average of the whole model (what the official trainer and ``ema.ema_copy`` keep, frozen parts
  included) in its own dtype: ``N * bytes(ema) / f``.
* **FSDP gathered layers** (FSDP over several GPUs, or casting to a compute dtype): each unit's parameters are
  gathered in the compute dtype. At the peak of backward FSDP holds the root unit (embeddings, lm_head, final
  norms, vae2llm, llm2vae: wrapped with no layer, gathered for the whole step) with its unsharded gradients, the
  decoder layer being computed and the one prefetched, and that layer's unsharded gradients:
  ``b * (root + root_trainable + 2 layer + layer_trainable)``.
* **autocast weight copies** (autocast only): the compute-dtype copy of every weight a matmul reads, ``b n``: a
  trainable weight's copy stays in autocast's cache until the forward ends; a frozen one's is saved for backward
  where its input needs a gradient (decoder layers without checkpointing, lm_head, generation in/out).
* **activations kept for backward**, from the shapes (D hidden, K = kv_heads * head_dim, I intermediate, H heads,
  V vocab, N tokens of the packed sequence). What one MoT decoder layer of this implementation keeps per token,
  read op by op from autograd's saved tensors (written for r = b; see ``layer_bytes_per_token`` for r != b):

  - always (the token's residual stream needs a gradient): the float32 inputs of its four RMSNorms (two layer
    norms of D, the q-norm of D, the k-norm of K) ``4 (3D + K)``; each expert's output that ``by_expert`` scatters
    back into place (``index_copy`` keeps its source: the two norms, q, o and the MLP, D each; k and v, K each)
    ``b (5D + 2K)``; the attention's q, k, v and output after GQA's repeat ``4 b D``; the MLP's SiLU input and the
    two factors of its product ``3 b I``; the norms' reciprocal RMS and the attention's log-sum-exp
    ``4 (2 + 2H + Hkv)``;
  - only when the token's expert trains (a frozen weight needs no input to get a gradient): the normalised values
    of the four norms ``b (3D + K)``, the inputs of q, k, v (each gathered apart), o and the MLP ``5 b D``, and the
    down projection's input ``b I``.

  So ``4 (3D + K) + b (17D + 3K + 4I)`` per token for a trained expert: 321,784 bytes per token per layer for
  BAGEL-7B-MoT in bf16 (225,528 for a frozen expert's token). Plus, per layer, SDPA's additive copy of the
  boolean sample mask in the compute dtype, ``b N min(N, sample_tokens)`` (every sample counted as long as the
  longest). With **checkpointing** each layer keeps only its input ``r D`` per token, and backward recomputes one
  layer at a time (the next row). Outside the decoder: the ViT's tokens keep ``2 r Dv + b (7 Dv + 2 Iv)`` per
  token per ViT layer when it trains (LayerNorm inputs, q/k/v input, attention q, k, v, output, out_proj, fc1 and
  fc2 inputs) and the connector ``b (Dv + 2D)``; the final norm ``(4 + 2r) D`` per token; the CE tokens' lm_head
  input ``b D`` and float32 log-probabilities ``4 V``; the latent tokens' time embedder and vae2llm / llm2vae
  inputs ``b (3D + 320)``.
* **one layer recomputed** (checkpointing only): one decoder layer's activations, as above, for N tokens.
* **backward workspace**: the gradients alive at the widest point of a layer's backward ``N (2rD + 3bI)``, and at
  the loss the float32 gradients of the log-probabilities and of the logits ``8 V`` per CE token.
* **margin**: 10% of all the parts above (the caching allocator's fragmentation under packed sequences of
  varying length, kernel workspaces) plus 1 GiB (the CUDA context, cuBLAS and NCCL buffers).

Checked against the real model (``tests/test_planner.py``): weights, gradients and AdamW state are exact; the
activations kept for backward agree with what autograd saves on micro-BAGEL within 5% in float32, bf16 and bf16
autocast (the formula leaves out index tensors, the RoPE tables and the grid padding of samples of unequal
length). Not counted: the
autoencoder's encoding of the batch (no gradient, freed before the forward), the K/V every layer returns (kept
until the decoder returns: under 1% of a layer's activations), DDP's gradient buckets (none with
``gradient_as_bucket_view=True``), CPU offload.

Official facts used as defaults (from BAGEL's release, not its code): training runs FSDP ``HYBRID_SHARD`` over
8-GPU nodes, activation checkpointing of every decoder layer, an FSDP-sharded EMA of the whole model, AdamW, a
frozen VAE; packed budgets of 32,768 expected / 36,864 max tokens per GPU for pre-training and 10,240 / 11,520
for fine-tuning (at most 10,240 tokens per sample then).
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..loading.checkpoint import read_config
from ..model import config as presets
from ..model.autoencoder import AutoEncoder
from ..model.bagel import Bagel
from ..model.config import BagelConfig

GiB = 1024**3
DTYPE_BYTES = {"bfloat16": 2, "float32": 4}
OPTIMIZERS = ("adamw", "adamw8bit", "sgd")
SHARDING = ("none", "full", "hybrid")
# The parts of Bagel's parameters, by name (``part_of``), and which of them each ``trainable`` choice trains.
PARTS = ("understanding_expert", "generation_expert", "embeddings", "generation_io", "vit", "connector",
         "position_tables")
TRAINABLE = {
    # everything but the fixed sin-cos position tables (BAGEL's own pre-training and fine-tuning)
    "all": ("understanding_expert", "generation_expert", "embeddings", "generation_io", "connector", "vit"),
    # the language model: both experts, embeddings and lm_head (ViT, connector, generation in/out frozen)
    "llm": ("understanding_expert", "generation_expert", "embeddings"),
    # image generation only: the *_moe_gen weights of every layer, vae2llm, the time embedder and llm2vae
    "generation_expert": ("generation_expert", "generation_io"),
    # understanding only: the Qwen2.5 expert, embeddings, lm_head, the connector and the ViT
    "understanding_expert": ("understanding_expert", "embeddings", "connector", "vit"),
}
BNB_MIN_8BIT = 4096  # bitsandbytes keeps float32 moments for tensors smaller than this
BNB_BLOCK = 256  # values per float32 scale of a blockwise 8-bit moment
MARGIN_SHARE, MARGIN_FIXED = 0.10, 1 * GiB


@dataclass(frozen=True)
class TrainPlan:
    """One training configuration, per GPU. Defaults: BAGEL's fine-tuning recipe on one 8-GPU node."""

    trainable: str = "all"  # a key of TRAINABLE
    freeze_vit: bool = False  # keep SigLIP frozen even when the choice above trains it (the official freeze_vit)
    weights_dtype: str = "bfloat16"  # the dtype the weights are kept in: "bfloat16" or "float32"
    master_weights: bool = True  # float32 copies of the trainable weights for the optimiser (bf16 weights only)
    compute_dtype: str | None = None  # None: the weights' dtype; "bfloat16" over float32 weights: mixed precision
    optimizer: str = "adamw"  # "adamw" (torch), "adamw8bit" (bitsandbytes), "sgd" (with momentum)
    ema: str | None = None  # dtype of an EMA copy of the model ("float32", "bfloat16"), or None for no EMA
    gpus: int = 8
    sharding: str = "full"  # "none" (DDP: all replicated), "full" (FSDP FULL_SHARD), "hybrid" (HYBRID_SHARD)
    gpus_per_node: int = 8  # hybrid shards within a node of this many GPUs and replicates across nodes
    checkpointing: bool = True  # activation checkpointing of every decoder layer
    tokens: int = 11_520  # packed sequence length per GPU per micro-batch (official fine-tuning maximum)
    sample_tokens: int = 10_240  # the longest sample in a sequence (official fine-tuning max_num_tokens_per_sample)
    gen_share: float = 0.5  # share of the tokens that are VAE latents (generation expert)
    vit_share: float = 0.3  # share that are ViT patches (understanding expert, through SigLIP)
    ce_share: float = 0.1  # share that are text tokens with a next-token (CE) loss
    gpu_memory_gib: float = 80.0

    def __post_init__(self):
        choices = (("trainable", TRAINABLE), ("weights_dtype", DTYPE_BYTES), ("optimizer", OPTIMIZERS),
                   ("sharding", SHARDING))
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}: use one of {', '.join(allowed)}")
        if self.compute_dtype is not None and self.compute_dtype not in DTYPE_BYTES:
            raise ValueError(f"compute_dtype={self.compute_dtype!r}: use one of {', '.join(DTYPE_BYTES)}, or None for "
                             "the weights' dtype")
        if self.ema is not None and self.ema not in DTYPE_BYTES:
            raise ValueError(f"ema={self.ema!r}: use one of {', '.join(DTYPE_BYTES)}, or None for no EMA")
        for name in ("gpus", "gpus_per_node", "tokens", "sample_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        shares = (self.gen_share, self.vit_share, self.ce_share)
        if min(shares) < 0 or sum(shares) > 1:
            raise ValueError(f"gen_share + vit_share + ce_share = {sum(shares)}: each share is in [0, 1], together "
                             "at most 1 (the rest is text without a loss)")
        if self.gpu_memory_gib <= 0:
            raise ValueError(f"gpu_memory_gib must be positive, got {self.gpu_memory_gib}")

    @property
    def trained_parts(self) -> tuple[str, ...]:
        return tuple(p for p in TRAINABLE[self.trainable] if not (p == "vit" and self.freeze_vit))

    @property
    def compute_bytes(self) -> int:
        """b: bytes of what the matmuls read and write (activations)."""
        return DTYPE_BYTES[self.compute_dtype or self.weights_dtype]

    @property
    def residual_bytes(self) -> int:
        """r: bytes of the residual stream. FSDP's mixed precision casts the parameters themselves, so the embeddings
        and everything after them are in the compute dtype; autocast (no FSDP) leaves the weights, the embeddings
        and the residual stream in the weights' dtype and casts only the matmuls' inputs."""
        return self.compute_bytes if self.sharding != "none" else DTYPE_BYTES[self.weights_dtype]

    @property
    def shard_factor(self) -> int:
        """How many GPUs share one copy of the parameters, gradients, optimiser state and EMA."""
        return {"none": 1, "full": self.gpus, "hybrid": min(self.gpus, self.gpus_per_node)}[self.sharding]


# ----------------------------------------------------------------------------------------------------------
# Parameters, counted on the meta device


@dataclass
class Count:
    """Parameters of a group: values, tensors, and (for bitsandbytes) the tensors of at least 4,096 values."""

    numel: int = 0
    tensors: int = 0
    large_numel: int = 0
    large_tensors: int = 0
    large_blocks: int = 0  # sum over large tensors of ceil(numel / 256)

    def add(self, numel: int) -> None:
        self.numel += numel
        self.tensors += 1
        if numel >= BNB_MIN_8BIT:
            self.large_numel += numel
            self.large_tensors += 1
            self.large_blocks += math.ceil(numel / BNB_BLOCK)


@dataclass
class ParameterCounts:
    parts: dict[str, Count]  # part -> its parameters, the whole model
    layer: dict[str, int]  # part -> parameters of one decoder layer (the FSDP unit that is gathered)
    root: dict[str, int]  # part -> parameters FSDP leaves in the root unit (embeddings, final norms, in/out)
    autoencoder: int

    def total(self, parts=PARTS) -> Count:
        out = Count()
        for name in parts:
            for f in ("numel", "tensors", "large_numel", "large_tensors", "large_blocks"):
                setattr(out, f, getattr(out, f) + getattr(self.parts[name], f))
        return out


def part_of(name: str) -> str:
    """The part of BAGEL a parameter belongs to, from its checkpoint name."""
    if name.endswith("pos_embed"):
        return "position_tables"  # fixed 2D sin-cos tables, never trained
    if "_moe_gen" in name:
        return "generation_expert"
    if name.startswith(("language_model.model.layers.", "language_model.model.norm.")):
        return "understanding_expert"
    if name.startswith(("language_model.model.embed_tokens.", "language_model.lm_head.")):
        return "embeddings"
    for prefix, part in (("time_embedder.", "generation_io"), ("vae2llm.", "generation_io"),
                         ("llm2vae.", "generation_io"), ("vit_model.", "vit"), ("connector.", "connector")):
        if name.startswith(prefix):
            return part
    raise ValueError(f"parameter {name} belongs to no part the planner knows: add it to part_of")


def count_parameters(cfg: BagelConfig) -> ParameterCounts:
    """Every parameter of ``Bagel(cfg)`` by part, built on the meta device (the 14.6 B model takes no memory)."""
    with torch.device("meta"):
        model, ae = Bagel(cfg), AutoEncoder(cfg.vae)
    parts = {p: Count() for p in PARTS}
    layer = {p: 0 for p in PARTS}
    root = {p: 0 for p in PARTS}
    root_prefixes = ("language_model.model.embed_tokens.", "language_model.lm_head.", "language_model.model.norm",
                     "vae2llm.", "llm2vae.")
    for name, p in model.named_parameters():
        part = part_of(name)
        parts[part].add(p.numel())
        if name.startswith("language_model.model.layers.0."):
            layer[part] += p.numel()
        if name.startswith(root_prefixes):
            root[part] += p.numel()
    return ParameterCounts(parts, layer, root, sum(p.numel() for p in ae.parameters()))


def set_trainable(model: Bagel, plan: TrainPlan) -> int:
    """Switch ``requires_grad`` on exactly the parameters ``plan`` trains (the position tables never); returns how
    many values train."""
    trained = plan.trained_parts
    n = 0
    for name, p in model.named_parameters():
        p.requires_grad_(part_of(name) in trained)
        n += p.numel() if p.requires_grad else 0
    return n


# ----------------------------------------------------------------------------------------------------------
# Bytes per GPU


def _shard(nbytes: float, plan: TrainPlan) -> int:
    return math.ceil(nbytes / plan.shard_factor)


def optimizer_bytes(c: Count, plan: TrainPlan) -> int:
    """Unsharded optimiser state of the parameters ``c`` (see the module docstring)."""
    updated = 4 if plan.master_weights or plan.weights_dtype == "float32" else DTYPE_BYTES[plan.weights_dtype]
    if plan.optimizer == "adamw":
        return 2 * updated * c.numel + 4 * c.tensors  # exp_avg, exp_avg_sq, and a float32 step per tensor
    if plan.optimizer == "sgd":
        return updated * c.numel  # one momentum buffer
    small = c.numel - c.large_numel  # adamw8bit: float32 moments for small tensors, 8-bit + scales for large ones
    return 8 * small + 2 * c.large_numel + 2 * 4 * c.large_blocks + 2 * 256 * 4 * c.large_tensors


def state_bytes(counts: ParameterCounts, plan: TrainPlan) -> dict[str, int]:
    """Weights, gradients, master weights, optimiser state and EMA per GPU."""
    b = DTYPE_BYTES[plan.weights_dtype]
    trained, everything = counts.total(plan.trained_parts), counts.total()
    master = plan.master_weights and plan.weights_dtype != "float32"
    return {
        "trainable weights": _shard(trained.numel * b, plan),
        "frozen weights": _shard((everything.numel - trained.numel) * b, plan),
        "autoencoder (frozen, float32)": 4 * counts.autoencoder,
        "gradients": _shard(trained.numel * b, plan),
        "master weights (float32)": _shard(4 * trained.numel, plan) if master else 0,
        "optimizer state": _shard(optimizer_bytes(trained, plan), plan),
        "EMA copy": _shard(everything.numel * DTYPE_BYTES[plan.ema], plan) if plan.ema else 0,
    }


def fsdp_buffer_bytes(counts: ParameterCounts, plan: TrainPlan) -> int:
    """Gathered compute-dtype parameters and unsharded gradients FSDP holds at the peak of backward (0 for DDP)."""
    if plan.sharding == "none" or (plan.shard_factor == 1 and plan.compute_bytes == DTYPE_BYTES[plan.weights_dtype]):
        return 0  # DDP, or FSDP on one GPU with nothing to gather nor cast
    trained = plan.trained_parts
    root, layer = sum(counts.root.values()), sum(counts.layer.values())
    root_t = sum(n for p, n in counts.root.items() if p in trained)
    layer_t = sum(n for p, n in counts.layer.items() if p in trained)
    return plan.compute_bytes * (root + root_t + 2 * layer + layer_t)


def autocast_copy_bytes(cfg: BagelConfig, counts: ParameterCounts, plan: TrainPlan) -> int:
    """Autocast (a compute dtype over float32 weights, without FSDP) multiplies by compute-dtype copies of the
    weights: a trainable weight's copy stays in autocast's cache until the forward ends, a frozen weight's is saved
    for backward where its input needs a gradient (the decoder layers unless checkpointing recomputes them,
    lm_head, the generation in/out layers). Embedding lookups are not cast."""
    if plan.compute_bytes == DTYPE_BYTES[plan.weights_dtype] or plan.sharding != "none":
        return 0
    trained, lm_head = plan.trained_parts, cfg.llm.vocab_size * cfg.llm.hidden_size  # embed_tokens is as large
    frozen_saved = [p for p in ("understanding_expert", "generation_expert", "generation_io")
                    if p not in trained and not (plan.checkpointing and p != "generation_io")]
    n = sum(counts.parts[p].numel for p in (*trained, *frozen_saved))
    n += -lm_head if "embeddings" in trained else lm_head  # trained: less embed_tokens (a lookup); frozen: lm_head
    return plan.compute_bytes * n


def layer_bytes_per_token(cfg: BagelConfig, b: int, r: int, trains: bool) -> int:
    """Bytes one MoT decoder layer keeps for backward per token whose expert trains (or not); b: compute dtype,
    r: residual stream dtype (see the module docstring; r = b unless autocast runs over float32 weights)."""
    llm = cfg.llm
    d, k, i = llm.hidden_size, llm.num_key_value_heads * llm.head_dim, llm.intermediate_size
    always = (4 * (3 * d + k)  # the four RMSNorms' float32 inputs
              + r * (2 * d + d + k) + b * (k + 2 * d)  # expert outputs scattered back: norms, q, k (r); v, o, MLP (b)
              + 4 * b * d + 3 * b * i  # attention q, k, v, output; SiLU input and the product's two factors
              + 4 * (2 + 2 * llm.num_attention_heads + llm.num_key_value_heads))  # 1/RMS, log-sum-exp
    mlp_inputs = 1 if r == b else 2  # autocast casts the float32 MLP input once for gate, once for up
    weights = r * 2 * d + b * (d + k) + b * (3 * d + d + mlp_inputs * d) + b * i  # normed values, linear inputs
    return always + (weights if trains else 0)


def decoder_layer_bytes(cfg: BagelConfig, plan: TrainPlan) -> int:
    """One decoder layer's activations for the whole packed sequence: its tokens by expert, and the mask."""
    b, r, n = plan.compute_bytes, plan.residual_bytes, plan.tokens
    gen = round(n * plan.gen_share)
    per_token = ((n - gen) * layer_bytes_per_token(cfg, b, r, "understanding_expert" in plan.trained_parts)
                 + gen * layer_bytes_per_token(cfg, b, r, "generation_expert" in plan.trained_parts))
    return per_token + b * n * min(n, plan.sample_tokens)  # SDPA's additive copy of the sample mask


def outside_decoder_bytes(cfg: BagelConfig, plan: TrainPlan) -> int:
    """Activations kept outside the decoder layers: ViT and connector, final norm, both heads."""
    b, r, n, trained = plan.compute_bytes, plan.residual_bytes, plan.tokens, plan.trained_parts
    d, v, vit = cfg.llm.hidden_size, cfg.llm.vocab_size, cfg.vit
    vit_tokens, gen_tokens, ce_tokens = (round(n * s) for s in (plan.vit_share, plan.gen_share, plan.ce_share))
    total = n * (4 + 2 * r) * d  # final norm: float32 input, normalised values, the expert output scattered back
    total += ce_tokens * (4 * v + (b * d if "embeddings" in trained else 0))  # log-probs, lm_head input
    if "generation_io" in trained:
        total += gen_tokens * b * (3 * d + 64 + 256)  # time embedder, vae2llm, llm2vae inputs
    if "vit" in trained:
        per_layer = (r * 2 * vit.hidden_size + b * (7 * vit.hidden_size + 2 * vit.intermediate_size)  # LN inputs: r
                     + 4 * (4 + vit.num_attention_heads))
        total += vit_tokens * (vit.num_hidden_layers * per_layer + b * (vit.hidden_size + 3 * vit.patch_size ** 2))
    if "connector" in trained:
        total += vit_tokens * b * (vit.hidden_size + 2 * d)
    return total


def activation_bytes(cfg: BagelConfig, plan: TrainPlan) -> dict[str, int]:
    """Activations kept for backward, one recomputed layer (checkpointing), and the backward workspace."""
    b, r, n, llm = plan.compute_bytes, plan.residual_bytes, plan.tokens, cfg.llm
    layer = decoder_layer_bytes(cfg, plan)
    kept_layers = llm.num_hidden_layers * (r * n * llm.hidden_size if plan.checkpointing else layer)
    ce_tokens = round(n * plan.ce_share)
    return {
        "activations kept for backward": kept_layers + outside_decoder_bytes(cfg, plan),
        "one layer recomputed (checkpointing)": layer if plan.checkpointing else 0,
        "backward workspace": n * (2 * r * llm.hidden_size + 3 * b * llm.intermediate_size) + 8 * ce_tokens
        * llm.vocab_size,
    }


@dataclass
class MemoryPlan:
    """Bytes per GPU of every part of a plan (``parts``, in table order), and whether they fit."""

    plan: TrainPlan
    parts: dict[str, int] = field(default_factory=dict)
    trainable_parameters: int = 0
    parameters: int = 0

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def capacity(self) -> int:
        return int(self.plan.gpu_memory_gib * GiB)

    @property
    def fits(self) -> bool:
        return self.total <= self.capacity

    def biggest(self, k: int = 3) -> list[tuple[str, int]]:
        return sorted(((n, v) for n, v in self.parts.items() if not n.startswith("margin")), key=lambda x: -x[1])[:k]


def plan_memory(cfg: BagelConfig, plan: TrainPlan, counts: ParameterCounts | None = None) -> MemoryPlan:
    """Bytes per GPU of each part of ``plan`` for the model ``cfg`` (``counts`` saves recounting the model)."""
    counts = counts or count_parameters(cfg)
    parts = {**state_bytes(counts, plan), "FSDP gathered layers": fsdp_buffer_bytes(counts, plan),
             "autocast weight copies": autocast_copy_bytes(cfg, counts, plan), **activation_bytes(cfg, plan)}
    parts[f"margin ({MARGIN_SHARE:.0%} + {MARGIN_FIXED / GiB:.0f} GiB)"] = int(MARGIN_SHARE * sum(parts.values())
                                                                              + MARGIN_FIXED)
    return MemoryPlan(plan, parts, counts.total(plan.trained_parts).numel, counts.total().numel)


# ----------------------------------------------------------------------------------------------------------
# Refusing what does not fit, with the changes that would


def candidate_changes(plan: TrainPlan) -> list[tuple[str, TrainPlan]]:
    """Single changes that lower the memory per GPU (full sharding over more GPUs and fewer tokens are searched
    apart: ``more_gpus``, ``fewer_tokens``)."""
    out = []
    if not plan.checkpointing:
        out.append(("checkpointing on", replace(plan, checkpointing=True)))
    if plan.optimizer == "adamw":
        out.append(("optimizer adamw8bit (bitsandbytes)", replace(plan, optimizer="adamw8bit")))
    if plan.ema == "float32":
        out.append(("EMA in bfloat16", replace(plan, ema="bfloat16")))
    if plan.ema:
        out.append(("no EMA", replace(plan, ema=None)))
    if plan.trainable != "generation_expert":
        out.append(("train the generation expert only", replace(plan, trainable="generation_expert")))
    if "vit" in plan.trained_parts:
        out.append(("freeze the ViT", replace(plan, freeze_vit=True)))
    if plan.master_weights and plan.weights_dtype == "bfloat16":
        out.append(("no float32 master weights: bf16 updates lose small steps",
                    replace(plan, master_weights=False)))
    return out


def more_gpus(cfg: BagelConfig, plan: TrainPlan, counts: ParameterCounts) -> tuple[str, MemoryPlan] | None:
    """The fewest GPUs over which full sharding fits, if any: the plan's own count when it is not fully sharded
    yet, else a larger power of two (up to 1,024)."""
    own = [plan.gpus] if plan.sharding != "full" and plan.gpus > 1 else []
    for gpus in own + [2**k for k in range(1, 11) if 2**k > plan.gpus]:
        mp = plan_memory(cfg, replace(plan, gpus=gpus, sharding="full"), counts)
        if mp.fits:
            return f"sharding full over {gpus} GPUs", mp
    return None


def fewer_tokens(cfg: BagelConfig, plan: TrainPlan, counts: ParameterCounts) -> tuple[str, MemoryPlan] | None:
    """The largest token budget (a multiple of 256) that fits, if any: memory grows with tokens."""
    lo, hi = 0, plan.tokens // 256  # lo fits (or is 0), hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if plan_memory(cfg, replace(plan, tokens=mid * 256), counts).fits:
            lo = mid
        else:
            hi = mid
    if lo == 0:
        return None
    tokens = lo * 256
    return f"tokens {tokens:,} per GPU", plan_memory(cfg, replace(plan, tokens=tokens), counts)


def fitting_changes(cfg: BagelConfig, plan: TrainPlan, counts: ParameterCounts | None = None
                    ) -> tuple[list[tuple[str, MemoryPlan]], list[tuple[str, MemoryPlan]]]:
    """(changes that fit, changes that help but do not fit alone), each with the plan it gives."""
    counts = counts or count_parameters(cfg)
    tried = [(label, plan_memory(cfg, p, counts)) for label, p in candidate_changes(plan)]
    tried += [found for found in (more_gpus(cfg, plan, counts), fewer_tokens(cfg, plan, counts)) if found]
    return [t for t in tried if t[1].fits], [t for t in tried if not t[1].fits]


def refusal(mp: MemoryPlan, fit: list, short: list) -> str:
    """The message of a plan that does not fit: by how much, the biggest parts, and what would fit."""
    over = (mp.total - mp.capacity) / GiB
    parts = ", ".join(f"{name} {v / GiB:.1f} GiB" for name, v in mp.biggest())
    lines = [f"this BAGEL training plan needs {mp.total / GiB:.1f} GiB per GPU but the GPU has "
             f"{mp.plan.gpu_memory_gib:g} GiB: {over:.1f} GiB too much. Biggest parts: {parts}."]
    if fit:
        lines.append("Each of these single changes would fit (checked by the planner): " + "; ".join(
            f"{label} ({m.total / GiB:.1f} GiB)" for label, m in fit) + ".")
    else:
        lines.append("No single change fits: combine several of these, each of which helps: " + "; ".join(
            f"{label} ({m.total / GiB:.1f} GiB)" for label, m in short) + ".")
    return "\n".join(lines)


def check_plan(cfg: BagelConfig, plan: TrainPlan, counts: ParameterCounts | None = None) -> MemoryPlan:
    """The memory plan if it fits the GPU; else ``ValueError`` naming what does not fit and the ways out."""
    counts = counts or count_parameters(cfg)
    mp = plan_memory(cfg, plan, counts)
    if not mp.fits:
        raise ValueError(refusal(mp, *fitting_changes(cfg, plan, counts)))
    return mp


# ----------------------------------------------------------------------------------------------------------
# Tables and the command line


def describe(plan: TrainPlan) -> str:
    """One line of what a plan trains and how."""
    master = " + float32 master" if plan.master_weights and plan.weights_dtype == "bfloat16" else ""
    if plan.compute_dtype and plan.compute_dtype != plan.weights_dtype:
        master += f", {plan.compute_dtype} compute"
    shard = {"none": "DDP (replicated)", "full": "FSDP full shard",
             "hybrid": f"FSDP hybrid shard ({plan.gpus_per_node} per node)"}[plan.sharding]
    vit = ", ViT frozen" if plan.freeze_vit else ""
    return (f"trainable={plan.trainable}{vit}, {plan.weights_dtype} weights{master}, {plan.optimizer}, "
            f"EMA {plan.ema or 'none'}, {shard}, checkpointing {'on' if plan.checkpointing else 'off'}, "
            f"{plan.tokens:,} tokens per GPU")


def format_plan(mp: MemoryPlan) -> str:
    """A table: part | GiB per GPU, the total, and whether it fits."""
    width = max(len(n) for n in mp.parts) + 2
    lines = [f"{describe(mp.plan)}, {mp.plan.gpus} GPU(s)",
             f"{mp.trainable_parameters:,} of {mp.parameters:,} parameters train",
             f"{'part':<{width}}GiB per GPU"]
    lines += [f"{name:<{width}}{v / GiB:>11.2f}" for name, v in mp.parts.items()]
    verdict = "fits" if mp.fits else "DOES NOT FIT"
    lines.append(f"{'total':<{width}}{mp.total / GiB:>11.2f}   of {mp.plan.gpu_memory_gib:g} GiB: {verdict}")
    return "\n".join(lines)


def plan_table(cfg: BagelConfig, gpus=(1, 8, 16), plan: TrainPlan | None = None,
               counts: ParameterCounts | None = None, **changes) -> str:
    """Every part side by side for several GPU counts (``changes`` are TrainPlan fields)."""
    counts = counts or count_parameters(cfg)
    plan = replace(plan or TrainPlan(), **changes)
    plans = [plan_memory(cfg, replace(plan, gpus=g), counts) for g in gpus]
    width = max(len(n) for n in plans[0].parts) + 2
    lines = [describe(plan), f"{plans[0].trainable_parameters:,} of {plans[0].parameters:,} parameters train",
             f"{'GiB per GPU':<{width}}" + "".join(f"{f'{g} GPU' + ('s' if g > 1 else ''):>10}" for g in gpus)]
    for name in plans[0].parts:
        lines.append(f"{name:<{width}}" + "".join(f"{mp.parts[name] / GiB:>10.2f}" for mp in plans))
    lines.append(f"{'total':<{width}}" + "".join(f"{mp.total / GiB:>10.2f}" for mp in plans))
    lines.append(f"{f'fits {plan.gpu_memory_gib:g} GiB':<{width}}" + "".join(
        f"{'yes' if mp.fits else 'NO':>10}" for mp in plans))
    return "\n".join(lines)


FINETUNE_TRAIN = {"all": "all", "generation": "generation_expert", "understanding": "understanding_expert"}


def plan_of_finetune(args: argparse.Namespace, gpus: int | None = None) -> TrainPlan:
    """The plan of ``python -m bagel_lite.training.finetune``'s arguments: float32 weights (its own master weights),
    bf16 compute with ``--bf16`` (autocast, or FSDP2's mixed precision with ``--fsdp``), torch AdamW, a float32 EMA
    of the whole model unless ``--ema 0``, FSDP full shard with ``--fsdp``, packed sequences of ``--max-tokens``;
    ``gpus`` defaults to torchrun's ``WORLD_SIZE``."""
    return TrainPlan(trainable=FINETUNE_TRAIN[args.train], freeze_vit=bool(getattr(args, "freeze_vit", False)),
                     weights_dtype="float32", master_weights=False,
                     compute_dtype="bfloat16" if getattr(args, "bf16", False) else None, optimizer="adamw",
                     ema="float32" if getattr(args, "ema", 0) else None,
                     gpus=gpus or int(os.environ.get("WORLD_SIZE", "1")),
                     sharding="full" if getattr(args, "fsdp", False) else "none",
                     checkpointing=bool(getattr(args, "checkpointing", False)),
                     tokens=int(getattr(args, "max_tokens", 11_520)),
                     gpu_memory_gib=float(getattr(args, "gpu_memory", 80.0)))


def check_fits_for_finetune(cfg: BagelConfig, args: argparse.Namespace, log=print) -> MemoryPlan:
    """Log the fine-tuning command's plan; refuse one that does not fit a GPU (``SystemExit`` with the planner's
    message). A ``--cpu`` run is only logged: the GPU memory does not bind it."""
    plan = plan_of_finetune(args)
    mp = plan_memory(cfg, plan)
    if not mp.fits and not getattr(args, "cpu", False):
        try:
            check_plan(cfg, plan)
        except ValueError as e:
            raise SystemExit(f"{e}\n(--no-plan skips this check)") from None
    log(format_plan(mp))
    return mp


def model_config(model: str) -> BagelConfig:
    """A preset ("full" = BAGEL-7B-MoT, also "7b"; "tiny") or a checkpoint folder (only its JSON is read)."""
    named = {"full": presets.full, "7b": presets.full, "bagel-7b-mot": presets.full, "tiny": presets.tiny}
    if model.lower() in named:
        return named[model.lower()]()
    if not Path(model).is_dir():
        raise SystemExit(f"--model {model}: not a folder, nor one of the presets {', '.join(named)}")
    return read_config(model)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = TrainPlan()
    p = argparse.ArgumentParser(prog="python -m bagel_lite.training.planner", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="full", help="a preset (full, tiny) or a checkpoint folder")
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 8, 16], help="GPU counts, side by side")
    p.add_argument("--trainable", default=d.trainable, choices=sorted(TRAINABLE))
    p.add_argument("--freeze-vit", action="store_true")
    p.add_argument("--weights-dtype", default=d.weights_dtype, choices=sorted(DTYPE_BYTES))
    p.add_argument("--master-weights", action=argparse.BooleanOptionalAction, default=d.master_weights)
    p.add_argument("--compute-dtype", default=None, choices=sorted(DTYPE_BYTES),
                   help="default: the weights' dtype; bfloat16 over float32 weights is mixed precision")
    p.add_argument("--optimizer", default=d.optimizer, choices=OPTIMIZERS)
    p.add_argument("--ema", default="none", choices=["none", *DTYPE_BYTES])
    p.add_argument("--sharding", default=d.sharding, choices=SHARDING)
    p.add_argument("--gpus-per-node", type=int, default=d.gpus_per_node)
    p.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=d.checkpointing)
    p.add_argument("--tokens", type=int, default=d.tokens)
    p.add_argument("--sample-tokens", type=int, default=d.sample_tokens)
    for share in ("gen_share", "vit_share", "ce_share"):
        p.add_argument(f"--{share.replace('_', '-')}", type=float, default=getattr(d, share))
    p.add_argument("--gpu-memory-gib", type=float, default=d.gpu_memory_gib)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    cfg = model_config(a.model)
    plan = TrainPlan(trainable=a.trainable, freeze_vit=a.freeze_vit, weights_dtype=a.weights_dtype,
                     master_weights=a.master_weights, compute_dtype=a.compute_dtype, optimizer=a.optimizer,
                     ema=None if a.ema == "none" else a.ema,
                     gpus=a.gpus[0], sharding=a.sharding, gpus_per_node=a.gpus_per_node,
                     checkpointing=a.checkpointing, tokens=a.tokens, sample_tokens=a.sample_tokens,
                     gen_share=a.gen_share, vit_share=a.vit_share, ce_share=a.ce_share,
                     gpu_memory_gib=a.gpu_memory_gib)
    counts = count_parameters(cfg)
    print(plan_table(cfg, tuple(a.gpus), plan, counts))
    for gpus in a.gpus:
        try:
            check_plan(cfg, replace(plan, gpus=gpus), counts)
        except ValueError as e:
            print(f"\n{gpus} GPU{'s' if gpus > 1 else ''}: {e}")


if __name__ == "__main__":
    main()
