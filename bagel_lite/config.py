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

from dataclasses import asdict, dataclass, field, replace

SUPPORTED_LLM_ACT = ("silu",)
SUPPORTED_VIT_ACT = ("gelu_pytorch_tanh",)


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
    # Set by the official app on top of the Qwen2 config:
    qk_norm: bool = True
    tie_word_embeddings: bool = False
    layer_module: str = "Qwen2MoTDecoderLayer"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}: fix llm_config.json"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of num_key_value_heads "
                f"{self.num_key_value_heads} (grouped-query attention needs whole groups)"
            )
        if self.hidden_act not in SUPPORTED_LLM_ACT:
            raise ValueError(f"LLM hidden_act {self.hidden_act!r} is not supported; use one of {SUPPORTED_LLM_ACT}")
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
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
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


PRESETS = {"full": full, "tiny": tiny}


def preset(name: str) -> BagelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()


# ----------------------------------------------------------------------------------------------------------
# The checkpoint folder's JSON files


def _pick(cls, data: dict) -> dict:
    names = {f.name for f in cls.__dataclass_fields__.values()}
    return {k: v for k, v in data.items() if k in names}


def llm_from_json(data: dict) -> LLMConfig:
    """``llm_config.json`` -> LLMConfig, with the official app's adjustments."""
    picked = _pick(LLMConfig, data)
    return LLMConfig(**{**picked, "qk_norm": True, "tie_word_embeddings": False,
                        "layer_module": "Qwen2MoTDecoderLayer"})


def vit_from_json(data: dict) -> ViTConfig:
    """``vit_config.json`` -> ViTConfig, with the official adjustments: RoPE off, the last layer dropped."""
    picked = _pick(ViTConfig, data)
    if "num_hidden_layers" not in picked:
        raise ValueError("vit_config.json has no num_hidden_layers")
    picked["num_hidden_layers"] = picked["num_hidden_layers"] - 1
    picked["rope"] = False
    return ViTConfig(**picked)


def ae_from_json(data: dict) -> AEConfig:
    return AEConfig(**_pick(AEConfig, data))


def llm_to_json(cfg: LLMConfig) -> dict:
    return {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], **asdict(cfg)}


def vit_to_json(cfg: ViTConfig) -> dict:
    # Store SigLIP's own depth: the loader drops one layer again, as the official app does.
    return {"model_type": "siglip_vision_model", **asdict(replace(cfg, num_hidden_layers=cfg.num_hidden_layers + 1))}


def ae_to_json(cfg: AEConfig) -> dict:
    data = asdict(cfg)
    data["ch_mult"] = list(cfg.ch_mult)
    return data
