"""BAGEL-7B-MoT at full size on one GPU: time and memory of text-to-image, editing and understanding.

    python benchmarks/gpu_full_size.py [--out results.json] [--size 1024] [--steps 50] [--folder DIR]
    python benchmarks/gpu_full_size.py --config tiny --device cpu --size 64 --steps 3   # a dry run on a CPU

No 29 GB download: the full model is built from the official configs with random weights, directly on the
GPU in bfloat16 (speed and memory do not depend on the weights' values). The tokenizer is micro-BAGEL's
byte-level BPE (a Qwen2 tokenizer of the same format; prompts are a few tokens longer or shorter than with
Qwen's vocabulary). Phases, each timed with the GPU synchronised and its peak memory read from PyTorch's
allocator:

1. ``t2i``        text-to-image at ``--size`` with the official defaults (``T2I_SETTINGS``: 50 timesteps,
                  text CFG 4 over t in [0.4, 1], shift 3, global renorm); denoising and decoding apart.
2. ``edit``       an edit of a ``--size`` image with the official edit defaults (three CFG branches at
                  every step, text_channel renorm).
3. ``understand`` a question about a 980x980 image (4,900 ViT tokens): prefill time, then greedy tokens/s.
4. ``attention``  which attention path ran (flash-attn's varlen kernel when importable, else SDPA) and which
                  SDPA kernels accept the masked denoising step.
5. ``folder``     (``--folder DIR``) the random weights saved as an official-layout folder, then loaded the
                  way a user loads BAGEL: ``Pipeline.from_folder(DIR, device="cuda")`` and
                  ``device="auto"`` (accelerate's device map), each timed and run once at ``--size``.
6. ``quantized``  NF4 / INT8 through bitsandbytes, when it is installed (needs ``--folder``).

Every phase is guarded: an error is recorded (type, message, last frames) and the next phase runs. The
results are written to ``--out`` after every phase, so a run cut short keeps what it measured. The last
stdout line is the whole result as one JSON object; a table comes before it.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import platform
import sys
import time
import traceback
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a plain checkout too (the GPU machine has no editable install)

from bagel_lite.inference.contexts import Context  # noqa: E402
from bagel_lite.inference.pipeline import Pipeline  # noqa: E402
from bagel_lite.inference.progress import StepInfo  # noqa: E402
from bagel_lite.loading.checkpoint import build, save_bagel  # noqa: E402
from bagel_lite.loading.devices import GiB, device_map, estimate_memory  # noqa: E402
from bagel_lite.loading.tokenizer import load_tokenizer  # noqa: E402
from bagel_lite.model import attention, config, masks  # noqa: E402

TOKENIZER = ROOT / "bagel_lite" / "micro" / "checkpoint"
PROMPT = ("A photo of a red fox sitting in fresh snow at sunrise, soft golden light, shallow depth of field, "
          "highly detailed fur, mountains in the background")
INSTRUCTION = "Make the fox look at the camera and add falling snowflakes."
QUESTION = "Describe this image in detail: what is in it, where, and in which colours?"


# --- measuring ---------------------------------------------------------------------------------------------

class Meter:
    """Wall time with the device synchronised, and the allocator's peak, over a ``with`` block."""

    def __init__(self, device: torch.device):
        self.device, self.seconds, self.peak_gib = device, None, None

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self):
        self.sync()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.sync()
        self.seconds = time.perf_counter() - self.start
        if self.device.type == "cuda":
            self.peak_gib = torch.cuda.max_memory_allocated(self.device) / GiB
        return False


class StepClock:
    """A sampler callback that notes when each Euler step starts (device synchronised) and the peak so far."""

    def __init__(self, meter: Meter):
        self.meter, self.times, self.peak_gib = meter, [], None

    def __call__(self, info: StepInfo):
        self.meter.sync()
        self.times.append(time.perf_counter())
        if self.meter.device.type == "cuda":
            self.peak_gib = torch.cuda.max_memory_allocated(self.meter.device) / GiB

    def summary(self) -> dict:
        """Per-step time (between step starts) and the denoising time, the last step taken as the median."""
        per_step = sorted(b - a for a, b in zip(self.times, self.times[1:]))
        median = per_step[len(per_step) // 2] if per_step else 0.0
        return {"steps": len(self.times), "denoise_s": round(self.times[-1] - self.times[0] + median, 3),
                "step_ms_median": round(1000 * median, 1),
                "denoise_peak_gib": None if self.peak_gib is None else round(self.peak_gib, 2)}


def environment(device: torch.device) -> dict:
    def version(name):
        try:
            return importlib.import_module(name).__version__
        except Exception:  # not installed, or no __version__
            return None


    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "transformers": version("transformers"), "accelerate": version("accelerate"),
           "safetensors": version("safetensors"), "flash_attn": version("flash_attn"),
           "bitsandbytes": version("bitsandbytes"), "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / GiB, 1),
                   multiprocessors=props.multi_processor_count)
    env["attention_path"] = "flash-attn varlen" if attention.FLASH_VARLEN is not None else "SDPA"
    return env


# --- the phases ---------------------------------------------------------------------------------------------

def build_pipeline(cfg: config.BagelConfig, device: torch.device, dtype: torch.dtype) -> tuple[Pipeline, dict]:
    """Random full-size weights straight on the device, the autoencoder beside them in float32."""
    meter = Meter(device)
    with meter:
        model, ae = build(cfg, device=device, dtype=dtype)
        model.eval().requires_grad_(False)
        ae.to(device, torch.float32).eval().requires_grad_(False)
    tokenizer, special = load_tokenizer(TOKENIZER)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    counts = model.num_parameters()
    info = {"build_s": round(meter.seconds, 2), "parameters": counts["total"],
            "weights_gib": round(sum(p.numel() * p.element_size() for p in model.parameters()) / GiB, 2)}
    if device.type == "cuda":
        info["resident_gib"] = round(torch.cuda.memory_allocated(device) / GiB, 2)
    return Pipeline(model, ae, tokenizer, special), info


def time_image(pipe: Pipeline, device: torch.device, make) -> tuple[dict, object]:
    """Run ``make(callback)`` (a generate or an edit): total time and peak, the denoising steps by the step
    clock, and the autoencoder's decode measured again alone on the same latents."""
    meter = Meter(device)
    clock = StepClock(meter)
    with meter:
        out = make(clock)
    result = {"total_s": round(meter.seconds, 3), "peak_gib": meter.peak_gib and round(meter.peak_gib, 2),
              **clock.summary(), "finite": bool(torch.isfinite(out.latents).all())}
    with Meter(device) as decode:
        pipe.engine.decode_image(out.latents, (out.image.height, out.image.width))
    result["decode_s"] = round(decode.seconds, 3)
    result["decode_peak_gib"] = decode.peak_gib and round(decode.peak_gib, 2)
    return result, out


def text_to_image(pipe, device, size, steps):
    result, out = time_image(pipe, device, lambda cb: pipe.generate(
        PROMPT, image_shape=(size, size), seed=0, num_timesteps=steps, callback=cb, progress=False))
    result["image_shape"] = [size, size]
    return result, out.image


def edit(pipe, device, image, steps):
    result, out = time_image(pipe, device, lambda cb: pipe.edit(
        image, INSTRUCTION, seed=0, num_timesteps=steps, callback=cb, progress=False))
    result["image_shape"] = [out.image.height, out.image.width]
    return result


@torch.no_grad()
def understand(pipe: Pipeline, device, image: Image.Image, tokens: int) -> dict:
    """Prefill (ViT + question) and greedy decoding speed; the random model rarely stops early."""
    with Meter(device) as prefill:
        ctx = pipe.engine.read(Context(), pipe.vae_transform.resize(image), vae=False)
        ctx = pipe.engine.read(ctx, QUESTION)
    with Meter(device) as decode:
        ids = pipe.engine.write(ctx, max_tokens=tokens).ids
    return {"context_tokens": ctx.kv_len, "prefill_s": round(prefill.seconds, 3),
            "prefill_peak_gib": prefill.peak_gib and round(prefill.peak_gib, 2), "tokens": len(ids),
            "tokens_per_s": round(len(ids) / decode.seconds, 1),
            "decode_peak_gib": decode.peak_gib and round(decode.peak_gib, 2)}


def attention_kernels(pipe: Pipeline, device, size: int) -> dict:
    """Which SDPA kernels accept the t2i denoising step's attention: (2 branches, 28 heads, masked)."""
    cfg = pipe.model.config.llm
    if device.type != "cuda":
        return {"path": "SDPA (CPU)"}
    from torch.nn.attention import SDPBackend, sdpa_kernel

    n = (size // pipe.model.config.latent_downsample) ** 2 + 2
    cached = 40  # the prompt's cache; the unconditional branch has none, so keys are padded and masked
    q = torch.randn(2, cfg.num_attention_heads, n, cfg.head_dim, device=device, dtype=pipe.dtype)
    k = torch.randn(2, cfg.num_attention_heads, cached + n, cfg.head_dim, device=device, dtype=pipe.dtype)
    valid = torch.ones(2, cached + n, dtype=torch.bool)
    valid[1, :cached] = False
    mask = masks.KeyMask(valid, n, causal=False, device=device).dense
    accepted = {}
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                    SDPBackend.MATH):
        try:
            with sdpa_kernel([backend]):
                torch.nn.functional.scaled_dot_product_attention(q, k, k, attn_mask=mask)
            accepted[backend.name] = True
        except RuntimeError:
            accepted[backend.name] = False
    return {"path": "flash-attn varlen" if attention.flash_supported(q) else "SDPA with a boolean mask",
            "sdpa_kernels_accepting_the_masked_step": accepted}


def profile(pipe: Pipeline, device, size: int) -> dict:
    """Where one understanding token and one denoising forward spend their time: the top operators by
    self CPU time and by self device time, and the number of kernel launches."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    ctx = pipe.engine.read(Context(), QUESTION)
    tables = {}
    with torch.no_grad():
        for name, work in (("understanding_8_tokens", lambda: pipe.engine.write(ctx, max_tokens=8).ids),
                           ("t2i_3_steps", lambda: pipe.generate(PROMPT, image_shape=(size, size), seed=0,
                                                                 num_timesteps=4, progress=False))):
            with torch_profile(activities=activities) as prof:
                work()
            events = prof.key_averages()
            key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
            tables[name] = {
                "by_cpu": events.table(sort_by="self_cpu_time_total", row_limit=10).splitlines(),
                "by_device": events.table(sort_by=key, row_limit=10).splitlines(),
                "kernel_launches": sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel",
                                                                             "cudaLaunchKernelExC")),
            }
    return tables


def free():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def from_folder(folder: Path, device, size: int, steps: int, mode: str) -> dict:
    """Load the saved folder as a user would (``device="cuda"`` or ``"auto"``), then one text-to-image."""
    with Meter(device) as load:
        pipe = Pipeline.from_folder(folder, device=mode) if mode != "nf4" else Pipeline.from_folder(
            folder, quantize="nf4")
    result = {"load_s": round(load.seconds, 2), "autoencoder_on": str(next(pipe.ae.parameters()).device)}
    if device.type == "cuda":
        result["resident_gib"] = round(torch.cuda.memory_allocated(device) / GiB, 2)
    if mode == "auto":
        placed = {str(getattr(m, "_hf_hook", None) and m._hf_hook.execution_device)
                  for m in pipe.model.modules() if hasattr(m, "_hf_hook")}
        result["hooked_devices"] = sorted(placed)
    result["t2i"], _ = text_to_image(pipe, device, size, steps)
    if device.type == "cuda":
        result["resident_after_gib"] = round(torch.cuda.memory_allocated(device) / GiB, 2)
    del pipe
    free()
    return result


# --- main ----------------------------------------------------------------------------------------------------

def run_phase(results: dict, name: str, fn, out: Path | None, deadline: float = float("inf")):
    start = time.perf_counter()
    if start > deadline:
        results[name] = {"skipped": "out of time (--deadline)"}
        return None
    try:
        value = fn()
    except Exception as e:  # a benchmark records what broke and goes on
        value = {"error": f"{type(e).__name__}: {e}", "where": traceback.format_exc(limit=-4).splitlines()[-8:]}
    print(f"[{time.perf_counter() - start:7.1f} s] {name}: {json.dumps(value)[:400]}", flush=True)
    results[name] = value
    if out is not None:
        out.write_text(json.dumps(results, indent=2))
    return value


def table(results: dict) -> str:
    rows = [("phase", "time", "peak GiB", "note")]
    for name in ("t2i", "edit"):
        r = results.get(name, {})
        if "total_s" in r:
            rows.append((name, f"{r['total_s']:.1f} s", f"{r['peak_gib']}",
                         f"denoise {r['denoise_s']:.1f} s, {r['step_ms_median']:.0f} ms/step, decode "
                         f"{r['decode_s']:.2f} s"))
    u = results.get("understand", {})
    if "tokens_per_s" in u:
        rows.append(("understand", f"{u['tokens_per_s']} tok/s", f"{u['decode_peak_gib']}",
                     f"prefill {u['context_tokens']} tokens in {u['prefill_s']:.2f} s"))
    for mode in ("from_folder_cuda", "from_folder_auto", "from_folder_cpu", "quantized_nf4"):
        r = results.get(mode, {})
        if "load_s" in r and "total_s" in r.get("t2i", {}):
            rows.append((mode, f"load {r['load_s']:.0f} s", f"{r['t2i']['peak_gib']}",
                         f"t2i {r['t2i']['total_s']:.1f} s, autoencoder on {r['autoencoder_on']}"))
    width = [max(len(str(row[i])) for row in rows) for i in range(4)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, width)) for row in rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=("full", "tiny"), default="full")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), default=None)
    ap.add_argument("--size", type=int, default=1024, help="image side for text-to-image and the edit")
    ap.add_argument("--steps", type=int, default=50, help="num_timesteps (the official default is 50)")
    ap.add_argument("--tokens", type=int, default=128, help="tokens to decode for understanding")
    ap.add_argument("--folder", type=Path, default=None, help="also save + load an official folder here")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here after each phase")
    ap.add_argument("--profile", action="store_true", help="also profile one understanding token and a step")
    ap.add_argument("--modes", default="cuda,auto", help="from_folder devices to load with (GPU runs)")
    ap.add_argument("--deadline", type=float, default=float("inf"),
                    help="seconds after which the phases not yet started are skipped")
    args = ap.parse_args(argv)
    deadline = time.perf_counter() + args.deadline

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    cfg = config.full() if args.config == "full" else config.tiny()
    torch.manual_seed(0)
    results = {"config": args.config, "dtype": str(dtype).removeprefix("torch."), "size": args.size,
               "steps": args.steps, "environment": environment(device)}
    est = estimate_memory(cfg, dtype, image_side=args.size)
    results["estimate"] = {"total_gib": round(est.total / GiB, 2), "weights_gib": round(est.weights / GiB, 2)}
    pipe, info = build_pipeline(cfg, device, dtype)
    results["build"] = info
    with torch.no_grad():  # a first small run: kernels chosen, handles created
        pipe.generate("warm up", image_shape=(256, 256) if args.size >= 256 else (args.size, args.size),
                      seed=0, num_timesteps=3, progress=False)
    made = {}

    def t2i():
        result, made["image"] = text_to_image(pipe, device, args.size, args.steps)
        return result

    run_phase(results, "t2i", t2i, args.out)
    source = made.get("image") or Image.new("RGB", (args.size, args.size), (120, 160, 200))
    run_phase(results, "understand", lambda: understand(pipe, device, source, args.tokens), args.out, deadline)
    run_phase(results, "edit", lambda: edit(pipe, device, source, args.steps), args.out, deadline)
    run_phase(results, "attention", lambda: attention_kernels(pipe, device, args.size), args.out)
    if device.type == "cuda":
        run_phase(results, "device_map_one_gpu", lambda: one_gpu_map(cfg), args.out)
    if args.profile:
        run_phase(results, "profile", lambda: profile(pipe, device, args.size), args.out, deadline)
    if args.folder is not None:
        run_phase(results, "save_folder", lambda: save(pipe, args.folder, device), args.out, deadline)
        pipe = None
        free()
        for mode in args.modes.split(",") if device.type == "cuda" else ("cpu",):
            run_phase(results, f"from_folder_{mode}",
                      lambda m=mode: from_folder(args.folder, device, args.size, args.steps, m), args.out, deadline)
        if importlib.util.find_spec("bitsandbytes") is not None:
            run_phase(results, "quantized_nf4", lambda: from_folder(args.folder, device, args.size, args.steps,
                                                                    "nf4"), args.out, deadline)
        else:
            results["quantized_nf4"] = {"skipped": "bitsandbytes is not installed on this machine"}
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2))
    print(table(results))
    print(json.dumps(results))


def one_gpu_map(cfg) -> dict:
    """accelerate's placement for one GPU: every module on device 0, none offloaded."""
    model, _ = build(cfg, device="meta")
    dmap = device_map(model, {0: int(torch.cuda.mem_get_info(0)[0] * 0.9)})
    return {"entries": len(dmap), "devices": sorted({str(v) for v in dmap.values()})}


def save(pipe: Pipeline, folder: Path, device) -> dict:
    with Meter(device) as meter:
        save_bagel(folder, pipe.model, pipe.ae, pipe.tokenizer)
    size = sum(f.stat().st_size for f in folder.iterdir()) / GiB
    return {"save_s": round(meter.seconds, 1), "folder_gib": round(size, 2)}


if __name__ == "__main__":
    main()
