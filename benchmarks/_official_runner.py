"""Worker of ``vs_official.py``: runs one workload through the official BAGEL inferencer, one thread, float32.

    <official venv>/bin/python benchmarks/_official_runner.py --official PATH --golden DIR --workload t2i256

The official code is imported from ``--official`` (a checkout of ByteDance-Seed/Bagel) at run time; nothing of
it is copied here. Three stand-ins, written for this benchmark, replace what cannot run on this CPU and leave the
measured work unchanged:

* ``flash_attn.flash_attn_varlen_func`` (CUDA only) -> ``sdpa_varlen``: scaled-dot-product attention per
  sequence of ``cu_seqlens``, causal masks aligned bottom-right as flash-attn documents (query i of a sequence
  of Lq queries over Lk keys sees keys j <= i + Lk - Lq), grouped-query heads shared as flash-attn
  shares them. SDPA is called as bagel_lite calls it (4-D, key/value heads repeated), so both reach the same
  CPU kernel. Same inputs, same arithmetic (one softmax attention per sequence), same output layout.
* ``torchvision`` (its compiled ops do not register with this CPU torch) -> the three names the official
  ``data/transforms.py`` uses: ``ToTensor``, ``Normalize`` and ``functional.resize``. The benchmark's images
  already have the size the official resize rule picks, so ``resize`` is the identity there (PIL's own resize
  returns a copy at the same size) and refuses any real resize; ToTensor and Normalize are exact.
* the official attention code casts q/k/v (and, in generation mode, the hidden states) to bfloat16, where the
  official model is bfloat16 and the casts are no-ops. The model here is float32 as on our side, so these two
  modules see a view of ``torch`` whose ``bfloat16`` is ``float32``: the casts stay no-ops. Every other name is
  the real ``torch``.
"""

from __future__ import annotations

import enum
import importlib.machinery
import json
import os
import sys
import types
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bar on either side (tqdm reads this when imported)
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as common  # noqa: E402

# ---------------------------------------------------------------------------------------------------------------
# Stand-ins


def sdpa_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None, dropout_p=0.0,
                softmax_scale=None, causal=False, **unused):
    """``flash_attn_varlen_func`` semantics with ``torch.nn.functional.scaled_dot_product_attention``.

    q (total_q, Hq, d), k and v (total_k, Hkv, d), Hq a multiple of Hkv; returns (total_q, Hq, d).
    """
    import torch
    import torch.nn.functional as F

    if dropout_p:
        raise ValueError("the stand-in is for inference: dropout_p must be 0")
    out = q.new_empty(q.shape[0], q.shape[1], v.shape[2])
    groups = q.shape[1] // k.shape[1]
    if groups > 1:  # query head h reads key/value head h // groups, as flash-attn; SDPA's enable_gqa would
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)  # fall back to its slow path
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for i in range(len(cq) - 1):
        q0, q1, k0, k1 = cq[i], cq[i + 1], ck[i], ck[i + 1]
        lq, lk = q1 - q0, k1 - k0
        mask = None
        if causal and lq > 1:  # bottom-right: query i sees keys j <= i + lk - lq
            mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(diagonal=lk - lq)
        # (1, H, L, d): with 3-D inputs the CPU SDPA takes its slow math path, with 4-D its flash kernel
        qi, ki, vi = (x.transpose(0, 1)[None] for x in (q[q0:q1], k[k0:k1], v[k0:k1]))
        o = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask, scale=softmax_scale)
        out[q0:q1] = o[0].transpose(0, 1)
    return out


class _ToTensor:
    """torchvision's ToTensor for a uint8 RGB PIL image: (3, H, W) float in [0, 1]."""

    def __call__(self, pic):
        import numpy as np
        import torch

        img = torch.from_numpy(np.array(pic, np.uint8, copy=True))
        img = img.view(pic.size[1], pic.size[0], len(pic.getbands())).permute((2, 0, 1)).contiguous()
        return img.to(dtype=torch.get_default_dtype()).div(255)


class _Normalize:
    """torchvision's Normalize: (x - mean) / std per channel."""

    def __init__(self, mean, std, inplace=False):
        self.mean, self.std, self.inplace = mean, std, inplace

    def __call__(self, tensor):
        import torch

        tensor = tensor if self.inplace else tensor.clone()
        mean = torch.as_tensor(self.mean, dtype=tensor.dtype).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=tensor.dtype).view(-1, 1, 1)
        return tensor.sub_(mean).div_(std)


def _resize(img, size, interpolation=None, max_size=None, antialias=True):
    height, width = size
    if (width, height) != img.size:
        raise RuntimeError(f"the torchvision stand-in cannot resize ({img.size} -> {(width, height)}): "
                           "give images whose sides the official resize rule keeps")
    return img.copy()  # what PIL's resize returns at the same size


class _InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def install_stand_ins():
    fa = types.ModuleType("flash_attn")
    fa.flash_attn_varlen_func = sdpa_varlen
    tv = types.ModuleType("torchvision")
    tr = types.ModuleType("torchvision.transforms")
    fn = types.ModuleType("torchvision.transforms.functional")
    fn.resize = _resize
    tr.ToTensor, tr.Normalize, tr.InterpolationMode, tr.functional = _ToTensor, _Normalize, _InterpolationMode, fn
    tv.transforms = tr
    stubs = {"flash_attn": fa, "torchvision": tv, "torchvision.transforms": tr, "torchvision.transforms.functional": fn}
    for name, module in stubs.items():  # a spec, so that importlib.util.find_spec (transformers probes) works
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    sys.modules.update(stubs)


def float32_torch():
    """A view of ``torch`` in which ``bfloat16`` is ``float32``; every other attribute is torch's own."""
    import torch

    class View(types.ModuleType):
        def __getattr__(self, name):
            return getattr(torch, name)

    view = View("torch")
    view.bfloat16 = torch.float32
    return view


# ---------------------------------------------------------------------------------------------------------------
# Loading, as the official app.py / inference.ipynb, but on the CPU in float32 and with the golden AE config


def load(official: Path, ckpt: Path):
    import torch
    from safetensors.torch import load_file

    sys.path.insert(0, str(official))
    install_stand_ins()
    from data.data_utils import add_special_tokens
    from data.transforms import ImageTransform
    from inferencer import InterleaveInferencer
    from modeling.autoencoder import AutoEncoder, AutoEncoderParams
    from modeling.bagel import (
        Bagel,
        BagelConfig,
        Qwen2Config,
        Qwen2ForCausalLM,
        SiglipVisionConfig,
        SiglipVisionModel,
        qwen2_navit,
        siglip_navit,
    )
    from modeling.qwen2 import Qwen2Tokenizer

    qwen2_navit.torch = siglip_navit.torch = float32_torch()

    llm_config = Qwen2Config.from_json_file(str(ckpt / "llm_config.json"))
    llm_config.qk_norm = True
    llm_config.tie_word_embeddings = False
    llm_config.layer_module = "Qwen2MoTDecoderLayer"
    vit_config = SiglipVisionConfig.from_json_file(str(ckpt / "vit_config.json"))
    vit_config.rope = False
    vit_config.num_hidden_layers -= 1
    # load_ae hard-codes FLUX's sizes; the golden tiny autoencoder brings its own (ae_config.json)
    vae_config = AutoEncoderParams(**json.loads((ckpt / "ae_config.json").read_text()))
    vae_model = AutoEncoder(vae_config)
    vae_model.load_state_dict(load_file(str(ckpt / "ae.safetensors")), strict=True)
    config = BagelConfig(visual_gen=True, visual_und=True, llm_config=llm_config, vit_config=vit_config,
                         vae_config=vae_config, vit_max_num_patch_per_side=70, connector_act="gelu_pytorch_tanh",
                         latent_patch_size=2, max_latent_size=64)
    language_model = Qwen2ForCausalLM(llm_config)
    vit_model = SiglipVisionModel(vit_config)
    model = Bagel(language_model, vit_model, config)
    model.vit_model.vision_model.embeddings.convert_conv2d_to_linear(vit_config)
    model.load_state_dict(load_file(str(ckpt / "ema.safetensors")), strict=True)
    model = model.to(torch.float32).eval()
    vae_model = vae_model.eval()
    tokenizer = Qwen2Tokenizer.from_pretrained(str(ckpt))
    tokenizer, new_token_ids, _ = add_special_tokens(tokenizer)
    return InterleaveInferencer(model=model, vae_model=vae_model, tokenizer=tokenizer,
                                vae_transform=ImageTransform(*common.VAE_TRANSFORM),
                                vit_transform=ImageTransform(*common.VIT_TRANSFORM), new_token_ids=new_token_ids)


def make_call(inferencer, spec: dict, golden: Path):
    """The workload as a function returning (seconds, tokens, sanity)."""
    import torch

    captured = {}
    decode = inferencer.decode_image

    def keep_latent(latent, image_shape):  # the final latent tokens, for the cross-check
        captured["latent"] = latent
        return decode(latent, image_shape)

    inferencer.decode_image = keep_latent
    kind, settings = spec["kind"], dict(spec.get("settings", {}))
    if "cfg_interval" in settings:
        settings["cfg_interval"] = list(settings["cfg_interval"])
    image = common.input_image(golden) if kind in ("edit", "und") else None

    if kind == "und":
        generate_text = inferencer.model.generate_text

        def timed_generate_text(**kw):  # the token loop only: the image and question are read before it
            secs, ids = common.timed(lambda: generate_text(**kw))
            captured["text"] = (secs, ids[:, 0].tolist())
            return ids

        inferencer.model.generate_text = timed_generate_text

        def call():
            inferencer(image=image, text=spec["prompt"], understanding_output=True, do_sample=False,
                       max_think_token_n=spec["max_tokens"])
            secs, ids = captured["text"]
            return secs, len(ids), {"text_ids": ids}
        return call

    def call():
        torch.manual_seed(common.SEED)  # the official sampler draws its noise (and the VAE sample) globally
        if kind == "t2i":
            secs, _ = common.timed(lambda: inferencer(text=spec["prompt"], image_shapes=tuple(spec["shape"]),
                                                      **settings))
        else:
            secs, _ = common.timed(lambda: inferencer(image=image, text=spec["prompt"], **settings))
        return secs, None, {"latent": captured["latent"].float().clone()}
    return call


def main():
    ap = common.worker_parser()
    ap.add_argument("--official", type=Path, required=True)
    args = ap.parse_args()

    def extra():
        import torch

        return {"stand_ins": common.STAND_INS, "torch": torch.__version__}

    common.run_worker("official", args, lambda: load(args.official.resolve(), args.golden / "tiny_ckpt"),
                      make_call, extra)


if __name__ == "__main__":
    main()
