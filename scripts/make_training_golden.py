"""Golden file of the OFFICIAL BAGEL training forward: the losses ``Bagel.forward`` returns on one packed batch.

    OMP_NUM_THREADS=1 <official venv>/bin/python scripts/make_training_golden.py \
        --official /path/to/Bagel --golden tests/golden --out tests/golden_training

``--official`` is a checkout of https://github.com/ByteDance-Seed/Bagel (imported at run time, nothing of it is
copied here; the golden was made at commit 056b5fd51a88c1eb4547318609e25d40080fcf87, read with ``git rev-parse``,
or given with ``--official-commit`` when the checkout is an exported tree); the official venv needs torch (CPU),
transformers 4.49, safetensors, accelerate, einops, opencv-python-headless, sentencepiece, numpy and pillow.
``--golden`` holds ``tiny_ckpt/`` and ``images/input.png``. Writes ``batch.safetensors``, ``batch.json`` and
``losses.json`` into ``--out`` (``README.md`` there is written by hand and explains every field).

What runs, all on the CPU in float32:

* the model is built from the tiny official-format checkpoint by ``benchmarks/_official_runner.py``'s ``load``
  (same stand-ins: flash-attn -> SDPA per sequence, torchvision -> exact ToTensor/Normalize and an identity
  resize, ``torch.bfloat16`` casts -> float32), then put in training mode (``model.train()``), which routes every
  layer through the official ``forward_train`` code;
* two stand-ins only this script needs: (1) the official packed attention wraps SDPA in
  ``sdpa_kernel([EFFICIENT_ATTENTION])``, a CUDA-only backend, so ``qwen2_navit.sdpa_kernel`` is replaced by a
  context that lets torch pick its CPU kernel (same call, same arithmetic); (2) ``data.dataset_info`` and
  ``data.video_utils`` (which import pyarrow / decord to read data files) are replaced by empty modules so that
  ``data.dataset_base`` imports: the packing code itself (``PackedDataset.pack_sequence`` / ``to_tensor``) is
  the official one, called on hand-written samples that follow the official datasets' sequence plans
  (``t2i_dataset.py``, ``vlm_dataset.py``, ``interleave_datasets/edit_dataset.py``) with all condition-dropout
  probabilities set to 0;
* ``padded_latent`` is ``vae_model.encode(padded_images)`` with the tiny autoencoder (its log-variance is
  e^-30, so the sample equals the mean to ~1e-7) and is then given to ``Bagel.forward`` directly, as the
  official training loop does;
* the flow noise is drawn once here (``torch.randn`` with a seeded generator) and handed to the forward by
  replacing ``torch.randn_like`` in ``modeling.bagel.bagel`` only, so the golden noise is exactly the noise used;
  the transformed times t are read from the input of ``time_embedder`` with a forward pre-hook.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import random
import subprocess
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import _official_runner as runner  # noqa: E402  (stand-ins + model loading, shared with the benchmark)

# Image sizes (height, width): multiples of 16 (VAE 8 x latent patch 2) and 14 (ViT patch), small.
T2I_HW = (48, 64)          # noisy target of the text-to-image sample: 3 x 4 latent tokens
UND_VIT_HW = (42, 56)      # ViT image of the understanding sample: 3 x 4 patches
EDIT_VAE_HW = (32, 48)     # clean source and noisy target of the edit sample: 2 x 3 latent tokens each
EDIT_VIT_HW = (28, 42)     # ViT view of the edit source: 2 x 3 patches
VAE_TRANSFORM = (64, 32, 16)   # ImageTransform(max, min, stride) that keeps every VAE size above
VIT_TRANSFORM = (56, 28, 14)   # ... and every ViT size above

PROMPTS = {
    "t2i_caption": "a red circle on the left",
    "und_question": "What is in the image?",
    "und_answer": "a red circle",
    "und_question_2": "Where is it?",
    "und_answer_2": "on the left side",
    "edit_instruction": "make the circle blue",
}


def cpu_sdpa_kernel(backends=None, set_priority=False):
    """Stand-in for ``torch.nn.attention.sdpa_kernel`` in the official packed attention: the official code asks
    for EFFICIENT_ATTENTION (CUDA only); on the CPU torch then finds no kernel. Let torch choose its CPU kernel."""
    return contextlib.nullcontext()


def stub_data_modules(official: Path):
    """``data.dataset_base`` imports ``data.dataset_info`` (dataset classes -> pyarrow, decord) and
    ``data.video_utils`` (decord) only to build datasets from files; this script packs samples itself."""
    import importlib.machinery

    info = types.ModuleType("data.dataset_info")
    info.DATASET_INFO, info.DATASET_REGISTRY = {}, {}
    video = types.ModuleType("data.video_utils")
    video.FrameSampler = None
    for m in (info, video):
        m.__spec__ = importlib.machinery.ModuleSpec(m.__name__, None)
        sys.modules[m.__name__] = m


def make_images(golden: Path):
    """PIL images already at the sizes the transforms keep (the transforms' resize is the identity here)."""
    from PIL import Image, ImageOps

    src = Image.open(golden / "images" / "input.png").convert("RGB")  # 224 wide, 112 high
    w, h = src.size
    left, right = src.crop((0, 0, w // 2, h)), src.crop((w // 2, 0, w, h))

    def sized(img, hw):
        return img.resize((hw[1], hw[0]), Image.BICUBIC)

    return {
        "t2i_target": sized(src, T2I_HW),
        "und_image": sized(left, UND_VIT_HW),
        "edit_source_vae": sized(right, EDIT_VAE_HW),
        "edit_source_vit": sized(right, EDIT_VIT_HW),
        "edit_target": sized(ImageOps.mirror(right), EDIT_VAE_HW),
    }


def plan(kind, enable_cfg, loss):
    return {"type": kind, "enable_cfg": enable_cfg, "loss": loss, "special_token_loss": 0,
            "special_token_label": None}


def make_samples(tokenizer, images, vae_tf, vit_tf):
    """Three samples in the official dataset format (sequence_plan / text_ids_list / image_tensor_list), with the
    plans the official datasets write for each task."""
    enc = tokenizer.encode
    t2i = dict(  # data/t2i_dataset.py: caption (cfg, no loss), then the noisy VAE target
        sequence_plan=[plan("text", 1, 0), plan("vae_image", 0, 1)],
        text_ids_list=[enc(PROMPTS["t2i_caption"])],
        image_tensor_list=[vae_tf(images["t2i_target"])],
    )
    und = dict(  # data/vlm_dataset.py: two turns, "<image>\nquestion" / "question 2" from human (no loss), the
        # answers from gpt (loss); enable_cfg 0 everywhere
        sequence_plan=[plan("vit_image", 0, 0), plan("text", 0, 0), plan("text", 0, 1), plan("text", 0, 0),
                       plan("text", 0, 1)],
        text_ids_list=[enc(PROMPTS[k]) for k in ("und_question", "und_answer", "und_question_2", "und_answer_2")],
        image_tensor_list=[vit_tf(images["und_image"])],
    )
    edit = dict(  # interleave_datasets/edit_dataset.py: source (VAE + ViT, cfg), instruction (cfg), target (loss)
        sequence_plan=[plan("vae_image", 1, 0), plan("vit_image", 1, 0), plan("text", 1, 0),
                       plan("vae_image", 0, 1)],
        text_ids_list=[enc(PROMPTS["edit_instruction"])],
        image_tensor_list=[vae_tf(images["edit_source_vae"]), vit_tf(images["edit_source_vit"]),
                           vae_tf(images["edit_target"])],
    )
    samples = {"t2i": t2i, "und": und, "edit": edit}
    for s in samples.values():
        s["num_tokens"] = 0  # only read by PackedDataset.__iter__, not by pack_sequence
    return samples


def packer(new_token_ids, use_flex):
    from data.data_utils import get_flattened_position_ids_extrapolate
    from data.dataset_base import DataConfig, PackedDataset

    pd = PackedDataset.__new__(PackedDataset)  # no dataset files: only the packing methods are used
    pd.data_config = DataConfig(grouped_datasets={}, text_cond_dropout_prob=0.0, vit_cond_dropout_prob=0.0,
                                vae_cond_dropout_prob=0.0, vae_image_downsample=16, max_latent_size=64,
                                vit_patch_size=14, max_num_patch_per_side=70)
    pd.use_flex = use_flex
    pd.max_num_tokens = 0
    pd.get_flattened_position_ids = get_flattened_position_ids_extrapolate
    for k, v in new_token_ids.items():
        setattr(pd, k, v)
    return pd


def pack(samples, new_token_ids, seed, use_flex):
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)  # pack_sequence draws the logit-normal timestep of each noisy image with np.random.randn
    pd = packer(new_token_ids, use_flex)
    status = pd.set_sequence_status()
    for name in ("t2i", "und", "edit"):
        status = pd.pack_sequence(copy.deepcopy(samples[name]), status)
    flex = dict(split_lens=list(status["split_lens"]), attn_modes=list(status["attn_modes"]))
    return pd.to_tensor(status), flex


def run_forward(model, data, noise, shift, outer=contextlib.nullcontext):
    """One official training forward with the given noise; returns the loss dict and what was captured."""
    import modeling.bagel.bagel as bagel_mod
    import torch

    captured = {}

    class TorchView(types.ModuleType):  # bagel.py's ``torch`` with randn_like returning the golden noise
        def __getattr__(self, name):
            return getattr(torch, name)

    def fixed_randn_like(x, *a, **k):
        assert x.shape == noise.shape, (x.shape, noise.shape)
        captured["clean"] = x.detach().clone()
        return noise.clone()

    view = TorchView("torch")
    view.randn_like = fixed_randn_like
    hooks = [
        model.time_embedder.register_forward_pre_hook(lambda m, a: captured.__setitem__("t", a[0].detach().clone())),
        model.vae2llm.register_forward_pre_hook(lambda m, a: captured.__setitem__("x_t", a[0].detach().clone())),
    ]
    old_torch, old_shift = bagel_mod.torch, model.timestep_shift
    bagel_mod.torch, model.timestep_shift = view, shift
    try:
        with torch.no_grad(), outer():
            out = model(**data)
    finally:
        bagel_mod.torch, model.timestep_shift = old_torch, old_shift
        for h in hooks:
            h.remove()
    return out, captured


def run_forward_float64(model, data, noise, shift):
    """The same official forward on a float64 copy of the model and inputs: a reference for the float32 noise.
    The official code's own float32 casts (the bf16 casts, the RMSNorm upcast) are pointed at float64 through the
    same kind of module view as the runner's; the sinusoidal time and RoPE tables stay float32 (``.float()``)."""
    import modeling.bagel.qwen2_navit as qwen2_navit
    import modeling.qwen2.modeling_qwen2 as modeling_qwen2
    import torch

    m64 = copy.deepcopy(model).double()
    m64.time_embedder.mlp.register_forward_pre_hook(lambda m, a: (a[0].double(),))
    view = qwen2_navit.torch  # the runner's float32 view, shared with siglip_navit
    old_q = modeling_qwen2.torch
    q_view = runner.float32_torch()
    q_view.float32 = torch.float64
    view.bfloat16, modeling_qwen2.torch = torch.float64, q_view
    d64 = {k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in data.items()}
    d64["nested_attention_masks"] = [m.double() for m in data["nested_attention_masks"]]
    try:
        return run_forward(m64, d64, noise.double(), shift)[0]
    finally:
        view.bfloat16, modeling_qwen2.torch = torch.float32, old_q


def reduce_losses(out, data, ce_loss_weights, ce_weight=1.0, mse_weight=1.0):
    """As train/pretrain_unified_navit.py reduces them, with world size 1 (no gradient accumulation)."""
    ce, mse = out["ce"], out["mse"]
    n_ce, n_mse = len(data["ce_loss_indexes"]), len(data["mse_loss_indexes"])
    ce_mean = ce.sum() / n_ce
    ce_rew = (ce * ce_loss_weights).sum() / ce_loss_weights.sum()
    mse_mean = mse.mean(dim=-1).sum() / n_mse
    return dict(ce=ce_mean.item(), ce_reweighted=ce_rew.item(), mse=mse_mean.item(),
                total=(ce_mean * ce_weight + mse_mean * mse_weight).item(),
                total_ce_tokens=n_ce, total_mse_tokens=n_mse)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official", type=Path, required=True, help="checkout of ByteDance-Seed/Bagel")
    ap.add_argument("--golden", type=Path, default=REPO / "tests" / "golden")
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "golden_training")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--official-commit", default=None, help="commit of --official when it is not a git checkout")
    ap.add_argument("--shift", type=float, default=2.0, help="timestep shift of the main run (official default "
                                                              "1.0 is run too)")
    args = ap.parse_args()
    official, golden = args.official.resolve(), args.golden.resolve()

    import numpy as np
    import torch
    from safetensors.torch import save_file

    runner.common.one_thread()
    inferencer = runner.load(official, golden / "tiny_ckpt")  # puts the official code on sys.path
    import modeling.bagel.qwen2_navit as qwen2_navit
    from data.transforms import ImageTransform

    qwen2_navit.sdpa_kernel = cpu_sdpa_kernel
    stub_data_modules(official)

    model, vae, tokenizer = inferencer.model, inferencer.vae_model, inferencer.tokenizer
    new_token_ids = inferencer.new_token_ids
    model.train()  # the official training path (forward_train); the tiny model has no dropout

    images = make_images(golden)
    samples = make_samples(tokenizer, images, ImageTransform(*VAE_TRANSFORM), ImageTransform(*VIT_TRANSFORM))
    data, _ = pack(samples, new_token_ids, args.seed, use_flex=False)
    data_flex, flex = pack(samples, new_token_ids, args.seed, use_flex=True)
    for k in ("packed_text_ids", "packed_position_ids", "packed_timesteps", "packed_vit_tokens"):
        assert torch.equal(data[k], data_flex[k]), k
    from data.data_utils import prepare_attention_mask_per_sample
    i = 0  # the flex-mode split_lens / attn_modes rebuild the dense per-sample masks exactly
    for n, mask in zip(data["sample_lens"], data["nested_attention_masks"]):
        j, total = i, 0
        while total < n:
            total, j = total + flex["split_lens"][j], j + 1
        assert torch.equal(prepare_attention_mask_per_sample(flex["split_lens"][i:j], flex["attn_modes"][i:j]), mask)
        i = j

    padded_images = data.pop("padded_images")
    torch.manual_seed(args.seed)
    with torch.no_grad():
        data["padded_latent"] = vae.encode(padded_images)
    ce_loss_weights = data.pop("ce_loss_weights")  # popped before the model call, as the training loop does

    n_latent = sum(h * w for h, w in data["patchified_vae_latent_shapes"])
    p, c = model.latent_patch_size, model.latent_channel
    gen = torch.Generator().manual_seed(args.seed + 1)
    noise = torch.randn(n_latent, p * p * c, generator=gen)

    out, cap = run_forward(model, data, noise, args.shift)
    out2, _ = run_forward(model, data, noise, args.shift)
    torch.set_num_threads(2)
    out3, _ = run_forward(model, data, noise, args.shift)
    runner.common.one_thread()
    out_default, cap_default = run_forward(model, data, noise, 1.0)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    out_math, _ = run_forward(model, data, noise, args.shift, lambda: sdpa_kernel([SDPBackend.MATH]))
    out64 = run_forward_float64(model, data, noise, args.shift)

    def maxdiff(a, b):
        return max((a[k] - b[k]).abs().max().item() for k in ("ce", "mse"))

    red = reduce_losses(out, data, ce_loss_weights)
    red3 = reduce_losses(out3, data, ce_loss_weights)
    red_default = reduce_losses(out_default, data, ce_loss_weights)
    red_math = reduce_losses(out_math, data, ce_loss_weights)
    red64 = reduce_losses(out64, data, ce_loss_weights.double())

    def per_token(o):  # ce per CE token, mse per MSE token (mean over its elements), in float64
        return {"ce": o["ce"].double(), "mse": o["mse"].double().mean(dim=-1)}

    def rel(a, b):
        a, b = per_token(a), per_token(b)
        return max(((a[k] - b[k]).abs() / b[k].abs()).max().item() for k in ("ce", "mse"))

    def abs_by_kind(a, b):
        return {"ce_per_token": (a["ce"].double() - b["ce"].double()).abs().max().item(),
                "mse_per_element": (a["mse"].double() - b["mse"].double()).abs().max().item(),
                "mse_per_token": (per_token(a)["mse"] - per_token(b)["mse"]).abs().max().item()}

    # ------------------------------------------------------------------ save
    args.out.mkdir(parents=True, exist_ok=True)
    masks = data["nested_attention_masks"]
    tensors = {
        "packed_text_ids": data["packed_text_ids"],
        "packed_text_indexes": data["packed_text_indexes"],
        "packed_position_ids": data["packed_position_ids"],
        "packed_vit_tokens": data["packed_vit_tokens"],
        "packed_vit_token_indexes": data["packed_vit_token_indexes"],
        "packed_vit_position_ids": data["packed_vit_position_ids"],
        "vit_token_seqlens": data["vit_token_seqlens"],
        "padded_images": padded_images,
        "padded_latent": data["padded_latent"],
        "packed_latent_position_ids": data["packed_latent_position_ids"],
        "packed_vae_token_indexes": data["packed_vae_token_indexes"],
        "packed_timesteps": data["packed_timesteps"].float(),
        "mse_loss_indexes": data["mse_loss_indexes"],
        "packed_label_ids": data["packed_label_ids"],
        "ce_loss_indexes": data["ce_loss_indexes"],
        "ce_loss_weights": ce_loss_weights.float(),
        "noise": noise,
        "timesteps_t": cap["t"],
        "packed_latent_clean": cap["clean"],
        "x_t": cap["x_t"],
        "ce": out["ce"],
        "mse": out["mse"],
    }
    for i, m in enumerate(masks):
        tensors[f"nested_attention_masks.{i}"] = m
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    save_file(tensors, str(args.out / "batch.safetensors"))

    commit = args.official_commit
    if commit is None:
        git = subprocess.run(["git", "-C", str(official), "rev-parse", "HEAD"], capture_output=True, text=True)
        commit = git.stdout.strip() or "unknown (not a git checkout; pass --official-commit)"
    def per_image(x):  # the value of each VAE image's first token (all tokens of one image share it)
        vals, start = [], 0
        for h, w in data["patchified_vae_latent_shapes"]:
            vals.append(float(x[start]))
            start += h * w
        return vals

    batch_json = {
        "checkpoint": "tests/golden/tiny_ckpt (ema.safetensors + ae.safetensors, float32)",
        "official_repo": "https://github.com/ByteDance-Seed/Bagel",
        "official_commit": commit,
        "seed": args.seed,
        "timestep_shift": args.shift,
        "official_default_timestep_shift": 1.0,
        "sequence_length": data["sequence_length"],
        "sample_lens": data["sample_lens"],
        "sample_names": ["t2i", "und", "edit"],
        "split_lens": flex["split_lens"],
        "attn_modes": flex["attn_modes"],
        "patchified_vae_latent_shapes": [list(s) for s in data["patchified_vae_latent_shapes"]],
        "vit_token_seqlens": data["vit_token_seqlens"].tolist(),
        "latent_patch_size": p,
        "latent_channel": c,
        "latent_downsample": model.latent_downsample,
        "max_latent_size": model.max_latent_size,
        "vit_patch_size": 14,
        "vit_max_num_patch_per_side": 70,
        "image_sizes_hw": {"t2i_target_vae": T2I_HW, "und_vit": UND_VIT_HW, "edit_source_vae": EDIT_VAE_HW,
                           "edit_source_vit": EDIT_VIT_HW, "edit_target_vae": EDIT_VAE_HW},
        "vae_image_order_in_padded": ["t2i_target (noisy)", "edit_source (clean)", "edit_target (noisy)"],
        "prompts": PROMPTS,
        "prompt_ids": {k: tokenizer.encode(v) for k, v in PROMPTS.items()},
        "special_token_ids": new_token_ids,
        "sequence_plans": {k: v["sequence_plan"] for k, v in samples.items()},
        "packed_timesteps_per_image": [x if np.isfinite(x) else "-inf" for x in per_image(data["packed_timesteps"])],
        "t_per_image": per_image(cap["t"]),
        "packed_text_ids": data["packed_text_ids"].tolist(),
        "packed_label_ids": data["packed_label_ids"].tolist(),
        "ce_loss_indexes": data["ce_loss_indexes"].tolist(),
        "mse_loss_indexes": data["mse_loss_indexes"].tolist(),
        "packed_position_ids": data["packed_position_ids"].tolist(),
    }
    (args.out / "batch.json").write_text(json.dumps(batch_json, indent=1) + "\n")

    src = "train/pretrain_unified_navit.py"
    losses = {
        "official_commit": commit,
        "timestep_shift": args.shift,
        "ce_per_token": out["ce"].tolist(),
        "mse_per_element_shape": list(out["mse"].shape),
        "mse_per_token": out["mse"].mean(dim=-1).tolist(),
        "reduced": {
            "ce": red["ce"], "mse": red["mse"], "total": red["total"],
            "ce_reweighted": red["ce_reweighted"],
            "total_ce_tokens": red["total_ce_tokens"], "total_mse_tokens": red["total_mse_tokens"],
        },
        "how_reduced": {
            "ce": f"ce.sum() * world_size / total_ce_tokens, total_ce_tokens = len(ce_loss_indexes) ({src} "
                  "lines 698 and 706, ce_loss_reweighting False by default, line 342)",
            "ce_reweighted": f"(ce * ce_loss_weights).sum() / ce_loss_weights.sum() ({src} lines 700-704, only "
                             "with --ce_loss_reweighting True)",
            "mse": f"mse.mean(dim=-1).sum() * world_size / total_mse_tokens, total_mse_tokens = "
                   f"len(mse_loss_indexes) ({src} lines 716-718)",
            "total": f"ce * ce_weight + mse * mse_weight ({src} lines 708 and 720), then "
                     "/ gradient_accumulation_steps (line 726; 1 by default)",
        },
        "ce_weight": 1.0, "ce_weight_source": f"{src} line 338 (TrainingArguments.ce_weight default)",
        "mse_weight": 1.0, "mse_weight_source": f"{src} line 334 (TrainingArguments.mse_weight default)",
        "at_official_default_shift": {
            "timestep_shift": 1.0,
            "t_per_image": per_image(cap_default["t"]),
            "mse_per_token": out_default["mse"].mean(dim=-1).tolist(),
            "reduced": {"ce": red_default["ce"], "mse": red_default["mse"], "total": red_default["total"]},
        },
        "float32_noise": {
            "same_threads_rerun_max_abs_diff": maxdiff(out, out2),
            "threads_2_vs_1_max_abs_diff": maxdiff(out, out3),
            "threads_2_vs_1_reduced_abs_diff": {k: abs(red[k] - red3[k]) for k in ("ce", "mse", "total")},
            "sdpa_math_backend_max_abs_diff": abs_by_kind(out, out_math),
            "sdpa_math_backend_reduced_abs_diff": {k: abs(red[k] - red_math[k]) for k in ("ce", "mse", "total")},
            "float64_max_abs_diff": abs_by_kind(out, out64),
            "float64_max_rel_diff_per_token": rel(out, out64),
            "float64_reduced_abs_diff": {k: abs(red[k] - red64[k]) for k in ("ce", "mse", "total")},
            "float64_reduced": {k: red64[k] for k in ("ce", "mse", "total")},
        },
        "torch": torch.__version__,
    }
    (args.out / "losses.json").write_text(json.dumps(losses, indent=1) + "\n")
    print(json.dumps({k: losses[k] for k in ("reduced", "float32_noise")}, indent=1))


if __name__ == "__main__":
    main()
