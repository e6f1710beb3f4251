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
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..model.autoencoder import AutoEncoder
from ..model.bagel import Bagel
from ..model.config import (
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
                      "interpolate_pos", "mot")
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
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); restore it from the original download") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object {{...}} of settings, but holds "
                              f"{type(data).__name__ if data is not None else 'null'}; restore it from the original "
                              "download")
    return data


def _parse(path: Path, parse, default=None):
    """``parse(json of path)``; a bad field becomes a CheckpointError naming the file and the field."""
    if default is not None and not path.is_file():
        return default
    try:
        return parse(_read_json(path))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path.name} in {path.parent}: {e}") from e


def _bagel_extra(data: dict) -> dict:
    unknown = sorted(set(data) - set(BAGEL_EXTRA_FIELDS))
    if unknown:
        raise ValueError(f"unknown keys {unknown}; bagel_config.json may hold {', '.join(BAGEL_EXTRA_FIELDS)}")
    return data


def read_config(folder: str | Path) -> BagelConfig:
    """The BagelConfig of a folder, with the official app's adjustments (QK-norm, MoT, ViT depth - 1)."""
    folder = Path(folder)
    llm = _parse(folder / "llm_config.json", llm_from_json)
    vit = _parse(folder / "vit_config.json", vit_from_json)
    vae = _parse(folder / "ae_config.json", ae_from_json, default=AEConfig())
    extra = _parse(folder / "bagel_config.json", _bagel_extra, default={})
    try:
        return BagelConfig(llm=llm, vit=vit, vae=vae, **extra)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"bagel_config.json in {folder}: {e}") from e


def build(cfg: BagelConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """A randomly initialised (Bagel, AutoEncoder) pair. ``device="meta"`` builds the structure only."""
    with torch.device(device):
        model, ae = Bagel(cfg), AutoEncoder(cfg.vae)
    if str(device) != "meta":
        model.to(dtype)
    return model, ae


FLOAT_DTYPES = ("F32", "F16", "BF16")  # safetensors' names of the dtypes a weight may have


def _file_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Every key's shape, read from the header; a weight that is not a float tensor is refused here."""
    try:
        with safe_open(str(path), framework="pt") as f:
            slices = {k: f.get_slice(k) for k in f.keys()}
            shapes = {k: tuple(s.get_shape()) for k, s in slices.items()}
            dtypes = {k: s.get_dtype() for k, s in slices.items()}
    except Exception as e:  # safetensors raises its own error types for a bad header or a short file
        raise CheckpointError(
            f"{path} could not be read ({e}). The file is truncated or corrupt: download or save it again."
        ) from e
    wrong = {k: d for k, d in dtypes.items() if d not in FLOAT_DTYPES}
    if wrong:
        key = sorted(wrong)[0]
        raise CheckpointError(f"{path.name} in {path.parent}: {key} is stored as {wrong[key]} ({len(wrong)} such "
                              f"tensors); weights must be float32, float16 or bfloat16: save the folder again")
    return shapes


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


def load_tensors(path: Path, device) -> dict[str, torch.Tensor]:
    """Every tensor of a .safetensors file; a NaN or infinite weight is refused, naming its key."""
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise CheckpointError(
            f"{path} could not be read ({e}). The file is truncated or corrupt: download or save it again."
        ) from e
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path.name} in {path.parent}: {key} holds NaN or infinite values; the weights "
                                  "are damaged (a diverged training run?): use another checkpoint")
    return tensors


def read_tokenizer(folder: Path, vocab_size: int | None = None):
    """The folder's tokenizer with BAGEL's markers; a corrupt tokenizer file is named, and so is a tokenizer
    with more tokens than the model's ``vocab_size`` embedding rows (when given)."""
    for name in ("vocab.json", "tokenizer.json", "tokenizer_config.json", "added_tokens.json",
                 "special_tokens_map.json"):
        if (folder / name).is_file():
            _read_json(folder / name)
    try:
        (folder / "merges.txt").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{folder / 'merges.txt'} could not be read as text ({e}); restore it") from e
    try:
        tokenizer, special = load_tokenizer(folder)
    except Exception as e:  # transformers' and tokenizers' own errors for a malformed vocabulary or merge list
        raise CheckpointError(f"the tokenizer files in {folder} (vocab.json, merges.txt, tokenizer*.json) could "
                              f"not be loaded ({type(e).__name__}: {e}); restore them from the original download"
                              ) from e
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise CheckpointError(
            f"the tokenizer in {folder} has {len(tokenizer)} tokens but the model only {vocab_size} "
            "embedding rows: the tokenizer files belong to another model"
        )
    return tokenizer, special


def load_autoencoder(ae: AutoEncoder, folder: Path) -> AutoEncoder:
    """The folder's ``ae.safetensors`` into ``ae`` (built on the meta device): on the CPU, float32, eval mode."""
    ae.load_state_dict(load_tensors(folder / "ae.safetensors", "cpu"), strict=True, assign=True)
    return ae.eval()


def check_folder(folder: str | Path) -> tuple[BagelConfig, Bagel, AutoEncoder]:
    """Check a folder's files, configs, keys and shapes without reading a weight; return its config and the
    (Bagel, AutoEncoder) built on the meta device, ready for ``load_state_dict(..., assign=True)``."""
    folder = Path(folder)
    _require_files(folder)
    cfg = read_config(folder)
    try:
        model, ae = build(cfg, device="meta")
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"the configs in {folder} describe a model that cannot be built ({e})") from e
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
    tokenizer, special = read_tokenizer(folder, cfg.llm.vocab_size)
    model.load_state_dict(load_tensors(folder / "ema.safetensors", "cpu"), strict=True, assign=True)
    ae = load_autoencoder(ae, folder)
    model.to(device=device, dtype=dtype).eval()
    ae.to(device=ae_device, dtype=ae_dtype).eval()
    for p in list(model.parameters()) + list(ae.parameters()):
        p.requires_grad_(False)
    return LoadedBagel(model, ae, tokenizer, special, cfg, folder)


def save_bagel(folder: str | Path, model: Bagel, ae: AutoEncoder, tokenizer) -> Path:
    """Write ``model``, ``ae`` and ``tokenizer`` as a checkpoint folder that ``load_bagel`` (and the official
    loader, for FLUX-sized autoencoders) reads back.

    Never half-written: the files are written into a sibling folder first; then the folder's old
    ``ema.safetensors`` is removed (from there on ``load_bagel`` refuses the folder), the new files move in, and
    ``ema.safetensors`` moves in last. A process killed at any moment leaves a folder that loads completely (old
    or new) or that ``load_bagel`` refuses for its missing weights. Other files in the folder are left alone."""
    folder = Path(folder)
    staging = folder.with_name(f".{folder.name}.saving")
    if staging.exists():
        shutil.rmtree(staging)  # what a killed save left behind
    staging.mkdir(parents=True)
    _write_folder(staging, model, ae, tokenizer)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ema.safetensors").unlink(missing_ok=True)
    for file in sorted(staging.iterdir(), key=lambda f: f.name == "ema.safetensors"):  # the weights last
        os.replace(file, folder / file.name)
    staging.rmdir()
    return folder


def _write_folder(folder: Path, model: Bagel, ae: AutoEncoder, tokenizer) -> None:
    cfg = model.config
    (folder / "llm_config.json").write_text(json.dumps(llm_to_json(cfg.llm), indent=2))
    (folder / "vit_config.json").write_text(json.dumps(vit_to_json(cfg.vit), indent=2))
    (folder / "ae_config.json").write_text(json.dumps(ae_to_json(ae.config), indent=2))
    extra = {k: getattr(cfg, k) for k in BAGEL_EXTRA_FIELDS}
    (folder / "bagel_config.json").write_text(json.dumps(extra, indent=2))
    save_file({k: v.detach().contiguous().cpu() for k, v in ae.state_dict().items()}, str(folder / "ae.safetensors"))
    tokenizer.save_pretrained(str(folder))
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # transformers >= 5 writes only tokenizer.json; the official layout has these too
        backend.model.save(str(folder))  # vocab.json + merges.txt
    missing = [f for f in TOKENIZER_FILES if not (folder / f).is_file()]
    if missing:
        raise CheckpointError(f"the tokenizer did not write {missing} into {folder}; save a Qwen2Tokenizer")
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
              str(folder / "ema.safetensors"))
