"""Inference speed of the tiny config on this machine: text-to-image with batched vs sequential CFG, and
understanding tokens per second.

    python benchmarks/inference_speed.py [--folder CKPT] [--size 256] [--steps 50] [--tokens 64]

The default checkpoint is the golden tiny folder (random weights of the tiny config); timings, not
outputs, are the point. Prints one table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from PIL import Image

import bagel_lite

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = Path(os.environ.get("BAGEL_LITE_GOLDEN", ROOT / "tests/golden")) / "tiny_ckpt"


def timed(fn, repeat=3):
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, default=DEFAULT)
    ap.add_argument("--size", type=int, default=256, help="generated image side in pixels")
    ap.add_argument("--steps", type=int, default=50, help="num_timesteps (grid points)")
    ap.add_argument("--tokens", type=int, default=64, help="tokens to generate for understanding")
    args = ap.parse_args()

    torch.manual_seed(0)
    pipe = bagel_lite.load(args.folder, device="cpu", dtype=torch.float32)
    shape = (args.size, args.size)
    # cfg interval [0, 1] with image guidance: every step runs all three branches (the editing workload)
    settings = dict(num_timesteps=args.steps, cfg_interval=(0.0, 1.0), cfg_img_scale=1.5)
    rows = []
    for batch in (True, False):
        secs, _ = timed(lambda b=batch: pipe.generate("a red circle on the left", image_shape=shape, seed=0,
                                                      batch_cfg=b, progress=False, **settings))
        rows.append(("batched" if batch else "sequential", secs))

    image = Image.new("RGB", (224, 224), (200, 30, 30))
    question = "What is in the image?"

    def understand():
        ctx = pipe.engine.read(bagel_lite.Context(), pipe.vae_transform.resize(image), vae=False)
        ctx = pipe.engine.read(ctx, question)
        start = time.perf_counter()
        # generate exactly args.tokens tokens: the random model may stop early at <|im_end|>, so count them
        ids = pipe.engine.write(ctx, max_tokens=args.tokens).ids
        return len(ids), time.perf_counter() - start

    with torch.no_grad():
        understand()
        n, secs = understand()
    tps = n / secs

    n_lat = (args.size // 16) ** 2
    print(f"bagel-lite inference on {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, tiny config ({args.folder.name})")
    print(f"text-to-image {args.size}x{args.size} ({n_lat} latent tokens), {args.steps - 1} Euler steps, "
          f"3 CFG branches per step:")
    for name, secs in rows:
        print(f"  {name:>10} CFG: {secs:7.3f} s   ({secs / (args.steps - 1) * 1000:6.1f} ms/step)")
    print(f"  speed-up of batching: {rows[1][1] / rows[0][1]:.2f}x")
    print(f"understanding: {n} tokens after a 224x224 image: {tps:7.1f} tokens/s")
    print(json.dumps({"t2i_batched_s": round(rows[0][1], 4), "t2i_sequential_s": round(rows[1][1], 4),
                      "understanding_tokens_per_s": round(tps, 1), "size": args.size, "steps": args.steps}))


if __name__ == "__main__":
    main()
