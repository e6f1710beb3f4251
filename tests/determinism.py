"""Outputs of generate, edit, answer and a multi-turn chat, as hashes: imported by test_reliability.py and run
as a script in fresh processes (``python tests/determinism.py outputs`` or ``... call CALL [NOISE.pt]``)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import GOLDEN  # noqa: E402

FAST = dict(num_timesteps=4, progress=False)


def golden_pipe():
    from bagel_lite.inference.pipeline import Pipeline
    from bagel_lite.loading.checkpoint import load_bagel
    from bagel_lite.loading.transforms import ImageTransform

    b = load_bagel(GOLDEN / "tiny_ckpt")
    return Pipeline(b.model, b.ae, b.tokenizer, b.special, vae_transform=ImageTransform(128, 64, 16),
                    vit_transform=ImageTransform(128, 56, 14))


def digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            h.update(part.detach().float().contiguous().numpy().tobytes())
        elif isinstance(part, Image.Image):
            h.update(part.tobytes())
        else:
            h.update(repr(part).encode())
    return h.hexdigest()


def context_digest(ctx) -> str:
    return digest(ctx.kv_len, ctx.rope, *[t for kv in (ctx.past or ()) for t in kv])


def outputs(pipe) -> dict[str, str]:
    picture = Image.open(GOLDEN / "images" / "input.png")
    drawn = pipe.generate("a red circle", image_shape=(32, 48), seed=3, think=True, max_think_tokens=4, **FAST)
    edited = pipe.edit(picture, "make it blue", seed=4, **FAST)
    answer = pipe.answer(picture, "what is it?", do_sample=True, temperature=1.0, seed=5, max_tokens=6)
    chat = pipe.chat()
    first = chat.send("a blue square", reply_image=True, seed=6, image_shape=(32, 32), num_timesteps=4)
    second = chat.send("what colour is it?", image=picture, seed=7, max_tokens=4)
    third = chat.send("now make it green", reply_image=True, seed=8, image_shape=(32, 32), num_timesteps=4)
    chat_digest = digest(first.image, second.text, third.image, third.latents, context_digest(chat.state.gen),
                         context_digest(chat.state.cfg_img))
    return {"generate": digest(drawn.image, drawn.latents, drawn.text), "edit": digest(edited.image, edited.latents),
            "answer": digest(answer), "chat": chat_digest}


def run_call(call: str, noise_path: str | None) -> str:
    pipe = golden_pipe()
    names = {"pipe": pipe, "image": Image.open(GOLDEN / "images" / "input.png")}
    if noise_path:
        names["init_noise"] = torch.load(noise_path)
    out = eval(call, names)
    return digest(out.image, out.latents, out.text)


if __name__ == "__main__":
    torch.manual_seed(int(sys.argv[-1]) if sys.argv[1] == "outputs" else 123)  # must not matter
    if sys.argv[1] == "outputs":
        print(json.dumps(outputs(golden_pipe())))
    else:
        print(json.dumps(run_call(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)))
