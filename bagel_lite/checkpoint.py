"""Loading and saving a checkpoint folder in the official BAGEL layout.

A folder holds::

    llm_config.json   Qwen2 geometry             vit_config.json   SigLIP geometry
    ema.safetensors   the Bagel state dict        ae.safetensors    the FLUX autoencoder
    vocab.json, merges.txt (+ other tokenizer files)
    ae_config.json    optional: only for a non-FLUX autoencoder (the official loader hard-codes FLUX's)
    bagel_config.json optional: BagelConfig values the official app hard-codes (table sizes, patch size)

``load_bagel(folder)`` reads it strictly: a missing file, a missing or unexpected key, a wrong shape or an
unreadable (truncated) file raises ``CheckpointError`` naming the file, the keys and what to do. The model is
first built on the meta device (no memory) and the weights are assigned in place, so the full 14.6 B
parameter model never exists twice. ``save_bagel`` writes the same layout back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .autoencoder import AutoEncoder
from .bagel import Bagel
from .config import (
    AEConfig,
    BagelConfig,
    ae_from_json,
    ae_to_json,
    llm_from_json,
    llm_to_json,
    vit_from_json,
    vit_to_json,
)
from .tokenizer import SpecialTokens, load_tokenizer

BAGEL_EXTRA_FIELDS = ("latent_patch_size", "max_latent_size", "vit_max_num_patch_per_side", "connector_act",
                      "interpolate_pos")
REQUIRED_FILES = ("llm_config.json", "vit_config.json", "ema.safetensors", "ae.safetensors")
TOKENIZER_FILES = ("vocab.json", "merges.txt")


class CheckpointError(RuntimeError):
    """A checkpoint folder that cannot be loaded as it is; the message says why and what to do."""


@dataclass
class LoadedBagel:
    model: Bagel
    ae: AutoEncoder
    tokenizer: object
    special: SpecialTokens
    config: BagelConfig
    folder: Path


def _require_files(folder: Path):
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist: pass the folder that holds ema.safetensors")
    missing = [f for f in REQUIRED_FILES + TOKENIZER_FILES if not (folder / f).is_file()]
    if missing:
        raise CheckpointError(
            f"checkpoint folder {folder} lacks {', '.join(missing)}. A BAGEL folder needs "
            f"{', '.join(REQUIRED_FILES + TOKENIZER_FILES)}: copy the missing files from the original download."
        )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); restore it from the original download") from e


def read_config(folder: str | Path) -> BagelConfig:
    """The BagelConfig of a folder, with the official app's adjustments (QK-norm, MoT, ViT depth - 1)."""
    folder = Path(folder)
    ae_json, bagel_json = folder / "ae_config.json", folder / "bagel_config.json"
    try:
        extra = _read_json(bagel_json) if bagel_json.is_file() else {}
        return BagelConfig(
            llm=llm_from_json(_read_json(folder / "llm_config.json")),
            vit=vit_from_json(_read_json(folder / "vit_config.json")),
            vae=ae_from_json(_read_json(ae_json)) if ae_json.is_file() else AEConfig(),
            **{k: v for k, v in extra.items() if k in BAGEL_EXTRA_FIELDS},
        )
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"the configs in {folder} are not usable: {e}") from e


def build(cfg: BagelConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """A randomly initialised (Bagel, AutoEncoder) pair. ``device="meta"`` builds the structure only."""
    with torch.device(device):
        model, ae = Bagel(cfg), AutoEncoder(cfg.vae)
    if str(device) != "meta":
        model.to(dtype)
    return model, ae


def _file_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for a bad header or a short file
        raise CheckpointError(
            f"{path} could not be read ({e}). The file is truncated or corrupt: download or save it again."
        ) from e


def check_keys(module: nn.Module, path: Path) -> None:
    """Compare the keys and shapes in ``path`` with those ``module`` expects; raise on any difference."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    found = _file_shapes(path)
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    if not (missing or unexpected or wrong):
        return

    def show(keys, fmt=str):
        return ", ".join(fmt(k) for k in keys[:6]) + (f" ... ({len(keys)} in all)" if len(keys) > 6 else "")

    parts = []
    if missing:
        parts.append(f"missing keys: {show(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {show(unexpected)}")
    if wrong:
        parts.append("wrong shapes: " + show(wrong, lambda k: f"{k} is {list(found[k])}, expected {list(expected[k])}"))
    raise CheckpointError(
        f"{path.name} in {path.parent} does not match the model its configs describe - " + "; ".join(parts)
        + ". Check that the .json configs come from the same checkpoint as the weights (re-download or re-save "
        "the folder)."
    )


def _load_tensors(path: Path, device) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise CheckpointError(
            f"{path} could not be read ({e}). The file is truncated or corrupt: download or save it again."
        ) from e


def check_folder(folder: str | Path) -> tuple[BagelConfig, Bagel, AutoEncoder]:
    """Check a folder's files, configs, keys and shapes without reading a weight; return its config and the
    (Bagel, AutoEncoder) built on the meta device, ready for ``load_state_dict(..., assign=True)``."""
    folder = Path(folder)
    _require_files(folder)
    cfg = read_config(folder)
    model, ae = build(cfg, device="meta")
    check_keys(model, folder / "ema.safetensors")
    check_keys(ae, folder / "ae.safetensors")
    return cfg, model, ae


def load_bagel(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
               ae_device: str | torch.device = "cpu", ae_dtype: torch.dtype = torch.float32) -> LoadedBagel:
    """Load an official-layout checkpoint folder: model, autoencoder, tokenizer (with BAGEL's markers).

    The model goes to ``device`` in ``dtype``; the autoencoder to ``ae_device`` in ``ae_dtype`` (the official
    app keeps it on the CPU in float32). Everything is checked before any weight is read.
    """
    folder = Path(folder)
    cfg, model, ae = check_folder(folder)
    tokenizer, special = load_tokenizer(folder)
    if len(tokenizer) > cfg.llm.vocab_size:
        raise CheckpointError(
            f"the tokenizer in {folder} has {len(tokenizer)} tokens but the model only {cfg.llm.vocab_size} "
            "embedding rows: the tokenizer files belong to another model"
        )

    model.load_state_dict(_load_tensors(folder / "ema.safetensors", "cpu"), strict=True, assign=True)
    ae.load_state_dict(_load_tensors(folder / "ae.safetensors", "cpu"), strict=True, assign=True)
    model.to(device=device, dtype=dtype).eval()
    ae.to(device=ae_device, dtype=ae_dtype).eval()
    for p in list(model.parameters()) + list(ae.parameters()):
        p.requires_grad_(False)
    return LoadedBagel(model, ae, tokenizer, special, cfg, folder)


def save_bagel(folder: str | Path, model: Bagel, ae: AutoEncoder, tokenizer) -> Path:
    """Write ``model``, ``ae`` and ``tokenizer`` as a checkpoint folder that ``load_bagel`` (and the official
    loader, for FLUX-sized autoencoders) reads back."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    (folder / "llm_config.json").write_text(json.dumps(llm_to_json(cfg.llm), indent=2))
    (folder / "vit_config.json").write_text(json.dumps(vit_to_json(cfg.vit), indent=2))
    (folder / "ae_config.json").write_text(json.dumps(ae_to_json(ae.config), indent=2))
    extra = {k: getattr(cfg, k) for k in BAGEL_EXTRA_FIELDS}
    (folder / "bagel_config.json").write_text(json.dumps(extra, indent=2))
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
              str(folder / "ema.safetensors"))
    save_file({k: v.detach().contiguous().cpu() for k, v in ae.state_dict().items()}, str(folder / "ae.safetensors"))
    tokenizer.save_pretrained(str(folder))
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # transformers >= 5 writes only tokenizer.json; the official layout has these too
        backend.model.save(str(folder))  # vocab.json + merges.txt
    missing = [f for f in TOKENIZER_FILES if not (folder / f).is_file()]
    if missing:
        raise CheckpointError(f"the tokenizer did not write {missing} into {folder}; save a Qwen2Tokenizer")
    return folder
