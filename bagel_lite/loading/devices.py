"""Putting the full model on GPUs: a memory estimate up front, and a device map across several GPUs.

BAGEL-7B-MoT holds 14.6 B parameters: 29.2 GB in bf16. Loading it onto a card that cannot hold it fails
half-way, after minutes of reading. ``check_fits`` compares an estimate with the free memory first and
refuses with a message that says what would fit. ``load_on_gpus`` splits the decoder layers over the
available GPUs with accelerate, as the official app does: a decoder layer is never split, and every module
whose output is written into the packed sequence (embeddings, connector, position tables, time embedder,
vae2llm, llm2vae) sits on the device of ``embed_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..model.config import BagelConfig
from .checkpoint import LoadedBagel, build, check_folder, load_autoencoder, load_tensors, read_tokenizer

GiB = 1024**3
SAME_DEVICE_AS_EMBEDDINGS = ("time_embedder", "latent_pos_embed", "vae2llm", "llm2vae", "connector", "vit_pos_embed")
NO_SPLIT = ["Qwen2MoTDecoderLayer", "SiglipEncoderLayer"]


@dataclass
class MemoryEstimate:
    weights: int
    kv_cache: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations

    def __str__(self):
        return (f"{self.total / GiB:.1f} GiB (weights {self.weights / GiB:.1f}, KV cache {self.kv_cache / GiB:.1f}, "
                f"activations {self.activations / GiB:.1f})")


QUANTIZED_BYTES = {"nf4": 0.5 + 4 / 64, "int8": 1.0}  # per weight of a quantized Linear: 4 bits + an fp32 scale per
# block of 64 (no double quantization, as the official app), or 8 bits (its per-row scales are negligible)
UNQUANTIZED_DTYPE = {"nf4": torch.bfloat16, "int8": torch.float32}  # everything else, as the official app's modes


def estimate_memory(cfg: BagelConfig, dtype: torch.dtype = torch.bfloat16, image_side: int = 1024, *,
                    context_tokens: int | None = None, cfg_branches: int = 3,
                    quantize: str | None = None) -> MemoryEstimate:
    """Rough GPU memory of one generation: weights + cached contexts + the activations of one CFG step.

    The default context is an editing request at ``image_side``: a VAE and a ViT block plus 100 text tokens.
    ``cfg_branches``: 3 for an edit (with text and image guidance), 2 for text-to-image. ``quantize`` ("nf4",
    "int8"): the weights of every Linear but ``lm_head`` in 4 / 8 bits, as ``load(quantize=...)`` loads them.
    """
    model, _ = build(cfg, device="meta")
    size = torch.finfo(dtype).bits // 8
    weights = sum(p.numel() for p in model.parameters()) * size
    if quantize is not None:
        if quantize not in QUANTIZED_BYTES:
            raise ValueError(f"quantize={quantize!r} is unknown; use one of {sorted(QUANTIZED_BYTES)}, or None")
        linear = sum(m.weight.numel() for name, m in model.named_modules()
                     if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head"))
        rest = sum(p.numel() for p in model.parameters()) - linear
        weights = int(linear * QUANTIZED_BYTES[quantize] + rest * (torch.finfo(UNQUANTIZED_DTYPE[quantize]).bits // 8))
    llm = cfg.llm
    latent_tokens = (image_side // cfg.latent_downsample) ** 2
    vit_tokens = (min(image_side, cfg.vit_max_num_patch_per_side * cfg.vit.patch_size) // cfg.vit.patch_size) ** 2
    context_tokens = context_tokens if context_tokens is not None else latent_tokens + vit_tokens + 4 + 100
    per_token_kv = llm.num_hidden_layers * 2 * llm.num_key_value_heads * llm.head_dim * size
    kv = per_token_kv * context_tokens * cfg_branches * 2  # the contexts, and their padded stack for batching
    query = cfg_branches * (latent_tokens + 2)
    # one layer's live tensors for the query block: hidden states, q/k/v/o, and the MLP's three wide tensors
    activations = query * (6 * llm.hidden_size + 3 * llm.intermediate_size) * size * 2
    return MemoryEstimate(weights, kv, activations)


def free_gpu_memory() -> dict[int, int]:
    """Free bytes on each visible CUDA device."""
    return {i: torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())}


def check_fits(estimate: MemoryEstimate, free: dict[int, int], margin: float = 1.1) -> None:
    """Raise ``MemoryError`` naming the numbers and the ways out, when ``estimate`` exceeds the free memory."""
    have = sum(free.values())
    need = estimate.total * margin
    if not free:
        raise MemoryError("no CUDA device is visible: the full model needs a GPU (the micro model runs on CPU)")
    if need > have:
        cards = ", ".join(f"cuda:{i} {b / GiB:.1f} GiB" for i, b in free.items())
        raise MemoryError(
            f"BAGEL needs about {need / GiB:.1f} GiB on the GPU ({estimate}, +{(margin - 1) * 100:.0f}% margin) but "
            f"only {have / GiB:.1f} GiB is free ({cards}). Free memory, add GPUs, generate smaller images, or load "
            "in 4 bits (pip install bitsandbytes; about 9 GiB of weights)."
        )


def device_map(model: torch.nn.Module, max_memory: dict) -> dict[str, int | str]:
    """An accelerate device map: decoder layers whole, the packed-sequence writers with ``embed_tokens``."""
    from accelerate import infer_auto_device_map

    dmap = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=NO_SPLIT)
    embed_key = next(k for k in dmap if "language_model.model.embed_tokens".startswith(k) or
                     k.startswith("language_model.model.embed_tokens"))
    embed_device = dmap[embed_key]
    for name in SAME_DEVICE_AS_EMBEDDINGS:
        for key in [k for k in dmap if k == name or k.startswith(name + ".")]:
            dmap[key] = embed_device
        if not any(k == name or k.startswith(name + ".") for k in dmap):
            dmap[name] = embed_device
    return dmap


def load_on_gpus(folder: str | Path, dtype: torch.dtype = torch.bfloat16, max_memory: dict | None = None):
    """Load an official folder across the visible GPUs (bf16), after checking that it fits.

    Returns a ``LoadedBagel`` whose autoencoder stays on the CPU in float32, as in the official app.
    """
    from accelerate import dispatch_model

    folder = Path(folder)
    cfg, model, ae = check_folder(folder)
    tokenizer, special = read_tokenizer(folder, cfg.llm.vocab_size)
    free = free_gpu_memory()
    check_fits(estimate_memory(cfg, dtype), free)
    max_memory = max_memory or {i: int(b * 0.9) for i, b in free.items()}
    dmap = device_map(model, max_memory)
    state = load_tensors(folder / "ema.safetensors", "cpu")
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    model = dispatch_model(model.eval(), device_map=dmap)
    return LoadedBagel(model, load_autoencoder(ae, folder), tokenizer, special, cfg, folder)


# --- 4-bit and 8-bit loading (optional: bitsandbytes on a CUDA machine) --------------------------------------

QUANTIZATION = {  # the official app's two settings
    "nf4": dict(load_in_4bit=True, bnb_4bit_compute_dtype="bf16", bnb_4bit_use_double_quant=False,
                bnb_4bit_quant_type="nf4"),
    "int8": dict(load_in_8bit=True, torch_dtype=torch.float32),
}


def check_quantize_request(mode: str, device, dtype) -> None:
    """``quantize`` decides placement and dtypes itself (layers over the visible GPUs; 4-/8-bit weights with their
    own compute dtype): an explicit ``device`` other than "auto"/"cuda", or any ``dtype``, is refused, never
    ignored."""
    if device is not None and str(device) not in ("auto", "cuda"):
        raise ValueError(f"quantize={mode!r} spreads the layers over every visible CUDA GPU; device={str(device)!r} "
                         "cannot be honoured: leave device out (or use 'auto'), or load without quantize")
    if dtype is not None:
        raise ValueError(f"quantize={mode!r} chooses the dtypes itself (4-/8-bit weights, "
                         f"{'bf16' if mode == 'nf4' else 'float32'} compute); dtype={dtype} cannot be honoured: "
                         "leave dtype out, or load without quantize")


def load_quantized(folder: str | Path, mode: str, max_memory: dict | None = None,
                   offload_folder: str | Path | None = None) -> LoadedBagel:
    """Load an official folder with its linear layers in 4-bit NF4 (~9 GB of weights) or 8-bit INT8.

    Needs ``pip install bitsandbytes`` (the ``quant`` extra) and a CUDA GPU; says so plainly otherwise.
    Embeddings, norms and the sin-cos tables stay unquantised (accelerate's default skip list). Layers that do
    not fit on the GPUs go to ``offload_folder`` (default: a new temporary folder; nothing is ever written into
    the checkpoint folder).
    """
    import importlib.util
    import tempfile

    if mode not in QUANTIZATION:
        raise ValueError(f"quantize={mode!r} is unknown; use one of {sorted(QUANTIZATION)}, or None for bf16")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(f"quantize={mode!r} needs bitsandbytes: pip install bitsandbytes "
                          "(or pip install -e '.[quant]'), on a machine with a CUDA GPU")
    if not torch.cuda.is_available():
        raise RuntimeError(f"quantize={mode!r} needs a CUDA GPU; on a CPU use micro-BAGEL or the float32 model")
    from accelerate.utils import BnbQuantizationConfig, load_and_quantize_model

    folder = Path(folder)
    cfg, model, ae = check_folder(folder)
    tokenizer, special = read_tokenizer(folder, cfg.llm.vocab_size)
    max_memory = max_memory or {i: int(b * 0.9) for i, b in free_gpu_memory().items()}
    offload = Path(offload_folder) if offload_folder else Path(tempfile.mkdtemp(prefix="bagel-lite-offload-"))
    model = load_and_quantize_model(model, BnbQuantizationConfig(**QUANTIZATION[mode]),
                                    weights_location=str(folder / "ema.safetensors"),
                                    device_map=device_map(model, max_memory), offload_folder=str(offload))
    return LoadedBagel(model.eval(), load_autoencoder(ae, folder), tokenizer, special, cfg, folder)
