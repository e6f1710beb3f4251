"""Configuration of BAGEL's three towers, as plain dataclasses.

BAGEL is assembled from three parts, each with its own config:

* ``LLMConfig``  — the Qwen2 language model, duplicated into two experts (Mixture of Transformer Experts).
* ``ViTConfig``  — the SigLIP-NaViT vision encoder used for *understanding*.
* ``AEConfig``   — the FLUX autoencoder whose latents are *generated*.

``BagelConfig`` ties them together with the few numbers that glue them (latent patch size, the size of the
position tables). ``full()`` is BAGEL-7B-MoT; ``tiny()`` is a small model for tests and quick demos.

The official checkpoint folder stores the first two as ``llm_config.json`` and ``vit_config.json``. The
official app does not use them as they are: it switches QK-norm on, unties the embeddings, uses MoT layers,
switches the ViT's 2D RoPE off and drops the ViT's last layer. ``from_folder_json`` applies exactly those
adjustments, and ``to_folder_json`` writes files that give the same model back.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, replace

from .checks import check_bool, check_choice, check_float, check_int

SUPPORTED_LLM_ACT = ("silu",)
SUPPORTED_VIT_ACT = ("gelu_pytorch_tanh",)
SUPPORTED_CONNECTOR_ACT = ("gelu_pytorch_tanh",)  # the official app's only value

# Keys of the Hugging Face configs that do not change the maths (training knobs, bookkeeping), or that the
# official app overrides anyway. Any other unknown key is reported, never silently dropped.
HF_BOOKKEEPING = {
    "_note", "_name_or_path", "architectures", "model_type", "torch_dtype", "dtype", "transformers_version",
    "attention_dropout", "initializer_range", "use_cache", "bos_token_id", "eos_token_id", "pad_token_id",
    "max_window_layers", "sliding_window", "freeze_und", "is_causal", "_attn_implementation", "return_dict",
    "output_attentions", "output_hidden_states", "projection_dim",
}
# Keys that change the model when set: only these values are what the official model does.
HF_FIXED = {"use_sliding_window": False, "rope_scaling": None}


def _positive_ints(cfg, names: tuple[str, ...]):
    for name in names:
        check_int(name, getattr(cfg, name), 1)


@dataclass(frozen=True)
class LLMConfig:
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    vocab_size: int = 152064
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768
    hidden_act: str = "silu"
    # Set by the official app on top of the Qwen2 config (whatever the file says); the only values built here:
    qk_norm: bool = True  # per-head RMSNorm of queries and keys before RoPE (the q_norm / k_norm weights)
    tie_word_embeddings: bool = False  # lm_head is its own weight, not embed_tokens
    layer_module: str = "Qwen2MoTDecoderLayer"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def __post_init__(self):
        _positive_ints(self, ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                              "num_key_value_heads", "vocab_size", "max_position_embeddings"))
        check_float("rope_theta", self.rope_theta, 1.0, 1e12)
        check_float("rms_norm_eps", self.rms_norm_eps, 1e-12, 1.0)
        if self.hidden_size % self.num_attention_heads or self.head_dim % 2:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not num_attention_heads {self.num_attention_heads} heads of "
                "an even width (RoPE rotates pairs): fix llm_config.json"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of num_key_value_heads "
                f"{self.num_key_value_heads} (grouped-query attention needs whole groups)"
            )
        if self.hidden_act not in SUPPORTED_LLM_ACT:
            raise ValueError(f"LLM hidden_act {self.hidden_act!r} is not supported; use one of {SUPPORTED_LLM_ACT}")
        for name, official in (("qk_norm", True), ("tie_word_embeddings", False)):
            if check_bool(name, getattr(self, name)) != official:
                raise ValueError(f"{name}={not official} is not supported: BAGEL's layers are built with {name}="
                                 f"{official} (the official app sets it so whatever llm_config.json says)")
        if self.layer_module != "Qwen2MoTDecoderLayer":
            raise ValueError(
                f"layer_module {self.layer_module!r}: bagel_lite implements the released Qwen2MoTDecoderLayer only"
            )


@dataclass(frozen=True)
class ViTConfig:
    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 26  # layers *used*: the official app drops the last of SigLIP's 27
    num_attention_heads: int = 16
    patch_size: int = 14
    image_size: int = 980
    num_channels: int = 3
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"
    rope: bool = False  # 2D RoPE instead of the learned position table; off in the release

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    def __post_init__(self):
        _positive_ints(self, ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                              "patch_size", "image_size", "num_channels"))
        check_float("layer_norm_eps", self.layer_norm_eps, 1e-12, 1.0)
        check_bool("rope", self.rope)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"ViT hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}: fix vit_config.json"
            )
        if self.hidden_act not in SUPPORTED_VIT_ACT:
            raise ValueError(f"ViT hidden_act {self.hidden_act!r} is not supported; use one of {SUPPORTED_VIT_ACT}")


@dataclass(frozen=True)
class AEConfig:
    """FLUX autoencoder hyper-parameters (the official loader hard-codes these FLUX.1 values)."""

    resolution: int = 256  # unused, kept for the file format
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 16
    downsample: int = 8
    scale_factor: float = 0.3611
    shift_factor: float = 0.1159

    def __post_init__(self):
        _positive_ints(self, ("resolution", "in_channels", "out_ch", "ch", "num_res_blocks", "z_channels",
                              "downsample"))
        if isinstance(self.ch_mult, (str, bytes)) or not hasattr(self.ch_mult, "__len__") or not self.ch_mult:
            raise TypeError(f"ch_mult must be a list of positive integers such as [1, 2, 4, 4], got {self.ch_mult!r}")
        object.__setattr__(self, "ch_mult", tuple(check_int("ch_mult", m, 1) for m in self.ch_mult))
        check_float("scale_factor", self.scale_factor, 1e-6, 1e6)  # latents are divided by it: never 0
        check_float("shift_factor", self.shift_factor, -1e6, 1e6)
        if any(self.ch * m % 32 for m in self.ch_mult):
            raise ValueError(f"ch {self.ch} x ch_mult {self.ch_mult} must all be multiples of 32 (group norm of 32 "
                             "groups)")
        if 2 ** (len(self.ch_mult) - 1) != self.downsample:
            raise ValueError(
                f"ae downsample {self.downsample} does not match ch_mult {self.ch_mult} "
                f"(each level after the first halves the size: expected {2 ** (len(self.ch_mult) - 1)})"
            )


@dataclass(frozen=True)
class BagelConfig:
    llm: LLMConfig = field(default_factory=LLMConfig)
    vit: ViTConfig = field(default_factory=ViTConfig)
    vae: AEConfig = field(default_factory=AEConfig)
    latent_patch_size: int = 2  # 2x2 latent pixels make one generation token
    max_latent_size: int = 64  # latent tokens per side of the latent position table (64 -> 1024 px)
    vit_max_num_patch_per_side: int = 70  # ViT patches per side of the ViT position tables (70 -> 980 px)
    connector_act: str = "gelu_pytorch_tanh"
    interpolate_pos: bool = False  # position ids: extrapolate (released) or interpolate
    # True: latent tokens go through the generation expert (MoT, BAGEL). False: a *dense* model, every token
    # through the understanding expert (the generation expert's weights exist but are never used) -- the
    # baseline that workbook 05 measures MoT against.
    mot: bool = True

    def __post_init__(self):
        _positive_ints(self, ("latent_patch_size", "max_latent_size", "vit_max_num_patch_per_side"))
        check_choice("connector_act", self.connector_act, SUPPORTED_CONNECTOR_ACT)
        check_bool("interpolate_pos", self.interpolate_pos)
        check_bool("mot", self.mot)

    @property
    def latent_channels(self) -> int:
        return self.vae.z_channels

    @property
    def patch_latent_dim(self) -> int:
        """Features of one latent token: p * p * C (64 for BAGEL)."""
        return self.latent_patch_size**2 * self.vae.z_channels

    @property
    def latent_downsample(self) -> int:
        """Pixels per latent token per side: VAE downsample x latent patch size (16 for BAGEL)."""
        return self.vae.downsample * self.latent_patch_size


# ----------------------------------------------------------------------------------------------------------
# Presets


def full() -> BagelConfig:
    """BAGEL-7B-MoT: Qwen2.5-7B geometry, SigLIP so400m/14 (26 layers used), FLUX.1 autoencoder."""
    return BagelConfig()


def tiny() -> BagelConfig:
    """A model of ~1 M parameters with every structural feature of the full one, for tests and demos."""
    return BagelConfig(
        llm=LLMConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=404,
            max_position_embeddings=4096,
        ),
        vit=ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
        vae=AEConfig(ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1),
    )


# ----------------------------------------------------------------------------------------------------------
# The checkpoint folder's JSON files


def _pick(cls, data: dict, file: str, strict: bool) -> dict:
    """The dataclass fields in ``data``. Other keys: bookkeeping is skipped, a key that would change the model
    must hold the official value, and any unknown key is an error (``strict``) or a warning, never dropped
    silently."""
    names = {f.name for f in cls.__dataclass_fields__.values()}
    for key, value in HF_FIXED.items():
        if key in data and data[key] != value:
            raise ValueError(f"{key} = {data[key]!r} is not supported (the official model has {value!r})")
    unknown = sorted(set(data) - names - HF_BOOKKEEPING - set(HF_FIXED))
    if unknown and strict:
        raise ValueError(f"unknown keys {unknown}: bagel_lite does not know what they do; remove them")
    if unknown:
        warnings.warn(f"{file}: keys {unknown} are unknown to bagel_lite and ignored", stacklevel=3)
    return {k: v for k, v in data.items() if k in names}


def llm_from_json(data: dict) -> LLMConfig:
    """``llm_config.json`` -> LLMConfig, with the official app's adjustments."""
    picked = _pick(LLMConfig, data, "llm_config.json", strict=False)
    return LLMConfig(**{**picked, "qk_norm": True, "tie_word_embeddings": False,
                        "layer_module": "Qwen2MoTDecoderLayer"})


def vit_from_json(data: dict) -> ViTConfig:
    """``vit_config.json`` -> ViTConfig, with the official adjustments: RoPE off, the last layer dropped."""
    picked = _pick(ViTConfig, data, "vit_config.json", strict=False)
    if "num_hidden_layers" not in picked:
        raise ValueError("vit_config.json has no num_hidden_layers")
    picked["num_hidden_layers"] = check_int("num_hidden_layers", picked["num_hidden_layers"], 2)
    picked["num_hidden_layers"] -= 1
    picked["rope"] = False
    return ViTConfig(**picked)


def ae_from_json(data: dict) -> AEConfig:
    return AEConfig(**_pick(AEConfig, data, "ae_config.json", strict=True))


def llm_to_json(cfg: LLMConfig) -> dict:
    return {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], **asdict(cfg)}


def vit_to_json(cfg: ViTConfig) -> dict:
    # Store SigLIP's own depth: the loader drops one layer again, as the official app does.
    return {"model_type": "siglip_vision_model", **asdict(replace(cfg, num_hidden_layers=cfg.num_hidden_layers + 1))}


def ae_to_json(cfg: AEConfig) -> dict:
    data = asdict(cfg)
    data["ch_mult"] = list(cfg.ch_mult)
    return data
