"""Worker of ``vs_official.py``: runs one workload through bagel_lite, one thread, float32.

    .venv/bin/python benchmarks/_lite_runner.py --golden DIR --workload t2i256

The same workloads, inputs, settings and seed as ``_official_runner.py`` (both read ``_bench_common.py``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as common  # noqa: E402


def make_call(pipe, spec: dict, golden: Path):
    """The workload as a function returning (seconds, tokens, sanity)."""
    kind, settings = spec["kind"], spec.get("settings", {})
    image = common.input_image(golden) if kind in ("edit", "und") else None

    if kind == "und":
        captured = {}
        write = pipe.engine.write

        def timed_write(*a, **kw):  # the token loop only: the image and question are read before it
            captured["text"] = common.timed(lambda: write(*a, **kw))
            return captured["text"][1]

        pipe.engine.write = timed_write

        def call():
            pipe.answer(image, spec["prompt"], max_tokens=spec["max_tokens"])
            secs, written = captured["text"]
            return secs, len(written.ids), {"text_ids": list(written.ids)}
        return call

    def call():
        if kind == "t2i":
            secs, out = common.timed(lambda: pipe.generate(spec["prompt"], image_shape=tuple(spec["shape"]),
                                                           seed=common.SEED, progress=False, **settings))
        else:
            secs, out = common.timed(lambda: pipe.edit(image, spec["prompt"], seed=common.SEED, progress=False,
                                                       **settings))
        return secs, None, {"latent": out.latents.float().clone()}
    return call


def load(ckpt: Path):
    import torch

    import bagel_lite
    from bagel_lite.loading.transforms import ImageTransform

    return bagel_lite.load(ckpt, device="cpu", dtype=torch.float32,
                           vae_transform=ImageTransform(*common.VAE_TRANSFORM),
                           vit_transform=ImageTransform(*common.VIT_TRANSFORM))


def main():
    args = common.worker_parser().parse_args()

    def extra():
        import torch

        import bagel_lite

        return {"torch": torch.__version__, "package": str(Path(bagel_lite.__file__).parent),
                "compiled": args.compiled}

    def load_side():
        pipe = load(args.golden / "tiny_ckpt")
        if args.compiled:
            pipe.model.compile_decoder()  # compiles lazily: in the warm-up call, timed apart
        return pipe

    common.run_worker("lite", args, load_side, make_call, extra)


if __name__ == "__main__":
    main()
