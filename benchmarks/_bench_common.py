"""What both sides of ``vs_official.py`` share: the workloads, their inputs, and the timing loop.

Imported by ``_official_runner.py`` (in the official code's own venv) and ``_lite_runner.py`` (in ours), so it
needs only the standard library, PIL and torch. Nothing here comes from the official repository.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

# The official notebook's text-to-image and editing settings (inference.ipynb, app.py), named as both
# inferencers name them.
T2I = dict(cfg_text_scale=4.0, cfg_img_scale=1.0, cfg_interval=(0.4, 1.0), timestep_shift=3.0, num_timesteps=50,
           cfg_renorm_min=0.0, cfg_renorm_type="global")
EDIT = dict(cfg_text_scale=4.0, cfg_img_scale=2.0, cfg_interval=(0.0, 1.0), timestep_shift=3.0, num_timesteps=50,
            cfg_renorm_min=0.0, cfg_renorm_type="text_channel")

WORKLOADS = {
    "t2i256": dict(kind="t2i", label="text-to-image 256x256, 50 steps, official t2i defaults",
                   prompt="a red circle on the left", shape=(256, 256), settings=T2I),
    "t2i512": dict(kind="t2i", label="text-to-image 512x512, 50 steps, official t2i defaults",
                   prompt="a red circle on the left", shape=(512, 512), settings=T2I),
    "edit224": dict(kind="edit", label="edit 224x224, 50 steps, official edit defaults",
                    prompt="make the circle blue", settings=EDIT),
    "und": dict(kind="und", label="understanding after one 224x224 image, greedy, tokens/s",
                prompt="What is in the image?", max_tokens=64),
    # not run by default: how cost grows with the context (the image's 256 ViT tokens + a question of 8 tokens
    # repeated) and with the image side
    "und1k": dict(kind="und", label="understanding, context ~1,000 tokens (image + 768-token question)",
                  prompt="What is in the image? " * 96, max_tokens=64),
    "und3k": dict(kind="und", label="understanding, context ~3,000 tokens (image + 2,816-token question)",
                  prompt="What is in the image? " * 352, max_tokens=64),
    "t2i1024": dict(kind="t2i", label="text-to-image 1024x1024, 50 steps, official t2i defaults",
                    prompt="a red circle on the left", shape=(1024, 1024), settings=T2I),
}
DEFAULT_WORKLOADS = ("t2i256", "t2i512", "edit224", "und")
SEED = 0

# What the official side runs with instead of what cannot run on this CPU (see _official_runner.py).
STAND_INS = [
    "flash_attn.flash_attn_varlen_func -> SDPA per cu_seqlens sequence, causal mask aligned bottom-right, "
    "called as bagel_lite calls SDPA (same CPU kernel)",
    "torchvision ToTensor / Normalize / resize -> exact stand-ins; inputs are 224x224, which the official "
    "resize rule keeps, so resize is the identity (and refuses any real resize)",
    "torch.bfloat16 casts in the official attention -> float32 (the model is float32; as in the official "
    "bf16 model, the casts are no-ops)",
    "progress bars off on both sides (TQDM_DISABLE=1)",
]

# Input images are 224x224: with a VAE transform of min side 224 (stride 16) and the official ViT transform
# (980, 224, 14) no resize happens, so the image transforms reduce to ToTensor + Normalize(0.5, 0.5).
VAE_TRANSFORM = (1024, 224, 16)
VIT_TRANSFORM = (980, 224, 14)


def one_thread():
    """One thread on both sides, set before torch does any work."""
    import torch

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set
        pass


def input_image(golden: Path):
    """224x224 RGB: the golden input (112x224) twice, one above the other. Sides are multiples of 14 and 16."""
    from PIL import Image

    src = Image.open(golden / "images" / "input.png").convert("RGB")
    w, h = src.size
    out = Image.new("RGB", (w, 2 * h))
    out.paste(src, (0, 0))
    out.paste(src, (0, h))
    return out


def rss_mib() -> float:
    """Current resident set size of this process."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(call, warmup: int, repeat: int):
    """``call()`` returns ((wall, cpu) seconds of the timed phase, tokens or None, sanity dict). Warm-up runs
    are not counted (their wall times come back apart: a compiled side compiles in them). Returns wall times,
    CPU times, tokens, sanity of the first timed run, warm-up wall times."""
    warm = [timed(call)[0][0] for _ in range(warmup)]
    times, cpu_times, tokens, sanity = [], [], None, None
    for _ in range(repeat):
        (wall, cpu), n, info = call()
        times.append(wall)
        cpu_times.append(cpu)
        tokens = n if tokens is None else tokens
        sanity = info if sanity is None else sanity
    return times, cpu_times, tokens, sanity, warm


def timed(fn):
    """((wall seconds, CPU seconds of this process), fn()). With one thread, CPU time is the work done, and moves
    much less than wall time when other programs share the cores."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return (time.perf_counter() - wall, time.process_time() - cpu), out


def report(side: str, workload: str, times, cpu_times, tokens, load_s: float, rss_loaded: float,
           extra: dict | None = None, warmup_times=()):
    """The worker's result: one JSON line on stdout, last."""
    print(json.dumps(dict(side=side, workload=workload, times=[round(t, 5) for t in times],
                          warmup_times=[round(t, 3) for t in warmup_times],
                          cpu_times=[round(t, 5) for t in cpu_times], tokens=tokens,
                          load_s=round(load_s, 3), rss_after_load_mib=round(rss_loaded, 1),
                          peak_rss_mib=round(peak_rss_mib(), 1), threads=int(os.environ.get("OMP_NUM_THREADS", 0)),
                          **(extra or {}))), flush=True)


def profile(call, out: Path, side: str, workload: str):
    """One run under torch.profiler (operator table) and one under cProfile (Python functions)."""
    import cProfile
    import io
    import pstats

    import torch

    out.mkdir(parents=True, exist_ok=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        (secs, _), _, _ = call()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=60)
    (out / f"{side}_{workload}_torch.txt").write_text(f"wall {secs:.4f} s under torch.profiler\n{table}\n")
    ops = {e.key: {"self_cpu_s": e.self_cpu_time_total / 1e6, "calls": e.count} for e in prof.key_averages()}
    (out / f"{side}_{workload}_ops.json").write_text(json.dumps({"wall_s": secs, "ops": ops}))
    pr = cProfile.Profile()
    pr.enable()
    (secs, _), _, _ = call()
    pr.disable()
    s = io.StringIO()
    st = pstats.Stats(pr, stream=s)
    st.sort_stats("tottime").print_stats(45)
    st.sort_stats("cumulative").print_stats(60)
    (out / f"{side}_{workload}_cprofile.txt").write_text(f"wall {secs:.4f} s under cProfile\n{s.getvalue()}")


def worker_parser():
    """The arguments both sides' workers take (one workload, timed or profiled, in its own process)."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--golden", type=Path, required=True)
    ap.add_argument("--workload", choices=sorted(WORKLOADS), required=True)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dump", type=Path, help="save the sanity outputs (latents / text ids) here (torch.save)")
    ap.add_argument("--profile", type=Path, help="profile one run into this folder instead of timing")
    ap.add_argument("--compiled", action="store_true", help="bagel_lite only: its optional compiled mode")
    return ap


def run_worker(side: str, args, load, make_call, extra) -> None:
    """Load (timed), build the workload's call, then profile it or time it and report one JSON line.
    ``load()`` returns the side's model; ``extra()`` the side's own fields for the report."""
    import torch

    one_thread()
    spec = WORKLOADS[args.workload]
    (load_s, _), model = timed(load)
    rss_loaded = rss_mib()
    call = make_call(model, spec, args.golden)
    with torch.no_grad():
        if args.profile:
            call()
            profile(call, args.profile, side, args.workload)
            return
        times, cpu_times, tokens, sanity, warm = measure(call, args.warmup, args.repeat)
    if args.dump:
        torch.save(sanity, args.dump)
    report(side, args.workload, times, cpu_times, tokens, load_s, rss_loaded, extra(), warm)
