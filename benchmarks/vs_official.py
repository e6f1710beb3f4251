"""bagel_lite beside the official BAGEL code, on the same CPU, the same checkpoint and the same settings.

    python benchmarks/vs_official.py --official /path/to/Bagel --official-python /path/to/venv/bin/python

``--official`` is a checkout of https://github.com/ByteDance-Seed/Bagel (imported at run time, never copied);
``--official-python`` is a Python whose environment can import it (torch, transformers 4.49, safetensors,
accelerate, einops, opencv-python-headless, sentencepiece). Everything runs on the public golden tiny checkpoint
(``tests/golden/tiny_ckpt`` or ``$BAGEL_LITE_GOLDEN``), float32, one thread.

Workloads (``benchmarks/_bench_common.py``): text-to-image 256x256 and 512x512 (50 steps, official t2i
defaults: cfg_text 4, cfg_img 1, interval [0.4, 1], shift 3, global renorm), edit of a 224x224 image (official
edit defaults: cfg_text 4, cfg_img 2, interval [0, 1], text_channel renorm) and understanding (greedy, 64
tokens after one 224x224 image and a question; tokens/s of the token loop). Image workloads are timed end to
end (reading the context, 49 Euler steps, decoding the image).

Each (side, workload) runs in its own process: load, one warm-up, then best of ``--repeat``. Sides alternate,
the order flipping every round, so that a busy machine hurts both alike. Prints a table (best time, the spread
of the per-round bests, the ratio bagel_lite / official, peak RSS) and one JSON line. Round 1 also checks that
both sides did the same work: identical text ids, final latents equal within the golden tolerance.

The official side runs with stand-ins for what cannot run on this CPU (flash-attn, torchvision's ops, bf16
casts in a float32 model); ``_official_runner.py`` says why they leave the measured work unchanged.
``--profile DIR`` writes a torch.profiler table and a cProfile listing of one run per side and workload instead,
and ends with the *kernel floor*: bagel_lite's time in attention, matmuls and convolutions over the official
total, the ratio it would reach if every other operation were free.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import _bench_common as common  # noqa: E402

GOLDEN = Path(os.environ.get("BAGEL_LITE_GOLDEN", ROOT / "tests/golden"))
LATENT_TOL = 2e-3  # the golden cases' tolerance on sampled latents


def worker_env(pythonpath: Path | None = None) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TQDM_DISABLE="1", PYTHONWARNINGS="ignore")
    env.pop("PYTHONPATH", None)  # each side imports only its own code
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    return env


def run_worker(side: str, workload: str, args, dump: Path | None = None, profile: Path | None = None) -> dict:
    if side == "official":
        cmd = [str(args.official_python), str(HERE / "_official_runner.py"), "--official", str(args.official)]
    else:
        cmd = [str(args.lite_python), str(HERE / "_lite_runner.py")]
    cmd += ["--golden", str(args.golden), "--workload", workload, "--warmup", str(args.warmup),
            "--repeat", str(args.repeat)]
    if dump:
        cmd += ["--dump", str(dump)]
    if profile:
        cmd += ["--profile", str(profile)]
    if side == "lite" and args.compiled:
        cmd += ["--compiled"]
    env = worker_env(None if side == "official" else args.lite_src)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"{side} {workload} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    if profile:
        return {}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_same_work(workload: str, dumps: dict) -> tuple[bool, str]:
    import torch

    off, lite = (torch.load(dumps[s]) for s in ("official", "lite"))
    if "text_ids" in off:
        same = off["text_ids"] == lite["text_ids"]
        return same, f"{len(off['text_ids'])} text ids {'identical' if same else 'DIFFER'}"
    a, b = off["latent"], lite["latent"]
    if a.shape != b.shape:
        return False, f"latent shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"
    diff = (a - b).abs().max().item()
    return diff <= LATENT_TOL, f"final latents {tuple(a.shape)}, max |diff| {diff:.1e} (tolerance {LATENT_TOL:g})"


def summarise(workload: str, results: list[dict]) -> dict:
    """Per side and clock (wall, CPU): the best time of each round (each process), the best over all; ratios
    per round and of the overall bests. Time workloads: ratio = bagel_lite / official time (lower is better);
    understanding: ratio = bagel_lite / official tokens per second (higher is better)."""
    spec = common.WORKLOADS[workload]
    und = spec["kind"] == "und"
    out = {"label": spec["label"], "und": und}
    for side in ("official", "lite"):
        rows = [r for r in results if r["side"] == side]
        out[side] = {"tokens": rows[0]["tokens"], "peak_rss_mib": max(r["peak_rss_mib"] for r in rows),
                     "first_call_s": max(r["warmup_times"][0] for r in rows) if rows[0]["warmup_times"] else None,
                     "run_rss_mib": max(r["peak_rss_mib"] - r["rss_after_load_mib"] for r in rows),
                     "load_s": min(r["load_s"] for r in rows)}
        for clock, key in (("wall", "times"), ("cpu", "cpu_times")):
            bests = [min(r[key]) for r in rows]
            out[side][clock] = {"round_best_s": bests, "best_s": min(bests)}
            if und:
                out[side][clock]["tokens_per_s"] = out[side]["tokens"] / min(bests)
                out[side][clock]["round_tokens_per_s"] = [out[side]["tokens"] / t for t in bests]
    for clock in ("wall", "cpu"):
        off, lite = out["official"][clock], out["lite"][clock]
        pairs = list(zip(off["round_best_s"], lite["round_best_s"]))
        if und:  # equal token counts (checked): the ratio of speeds is the inverse ratio of times
            out[clock] = {"ratio": off["best_s"] / lite["best_s"], "round_ratios": [a / b for a, b in pairs]}
        else:
            out[clock] = {"ratio": lite["best_s"] / off["best_s"], "round_ratios": [b / a for a, b in pairs]}
    return out


def fmt_range(values, unit_fmt) -> str:
    lo, hi = min(values), max(values)
    return unit_fmt(lo) if len(values) == 1 or unit_fmt(lo) == unit_fmt(hi) else f"{unit_fmt(lo)}-{unit_fmt(hi)}"


def revision(folder: Path) -> str:
    """The git commit of a checkout, or of an exported tree that left it in a ``.commit`` file."""
    marker = folder / ".commit"
    if marker.is_file():
        return marker.read_text().strip()[:12]
    proc = subprocess.run(["git", "-C", str(folder), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True)
    dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--", "bagel_lite"],
                           capture_output=True, text=True).stdout.strip()
    return (proc.stdout.strip() + (" + uncommitted changes" if dirty else "")) if proc.returncode == 0 else "?"


# Kernels whose arithmetic is the same on both sides (attention over the same keys, the same linear layers) and
# the autoencoder's convolutions (the same convolutions; bagel_lite runs them channels-last).
SAME_ARITHMETIC = ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::mm", "aten::addmm", "aten::bmm")
CONVOLUTIONS = ("aten::mkldnn_convolution", "aten::_slow_conv2d_forward")


def seconds(ops: dict, names=None) -> float:
    """Self CPU time of the named operators in a profile's ``ops`` table (all of them, if ``names`` is None)."""
    return sum(o["self_cpu_s"] for k, o in ops.items() if names is None or k in names)


def kernel_floor(profile_dir: Path, workloads) -> None:
    """From the profiles: how fast bagel_lite could be at the arithmetic both sides do, if everything but the
    large kernels (norms, activations, copies, Python) cost nothing. Prints one row per workload."""
    print("\nkernel floor (self CPU time under torch.profiler, one run each; seconds):")
    print("| workload | official total | bagel_lite total | attention + matmuls (official / bagel_lite) | "
          "convolutions (official / bagel_lite) | floor: bagel_lite's kernels / official total | ratio now |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    floors = {}
    for w in workloads:
        side = {s: json.loads((profile_dir / f"{s}_{w}_ops.json").read_text())["ops"] for s in ("official", "lite")}
        total, same, conv = ({s: seconds(ops, names) for s, ops in side.items()}
                             for names in (None, SAME_ARITHMETIC, CONVOLUTIONS))
        floors[w] = (same["lite"] + conv["lite"]) / total["official"]
        print(f"| {w} | {total['official']:.3f} | {total['lite']:.3f} | {same['official']:.3f} / {same['lite']:.3f} "
              f"| {conv['official']:.3f} / {conv['lite']:.3f} | {floors[w]:.2f}x | "
              f"{total['lite'] / total['official']:.2f}x |")
    print("The floor is the ratio bagel_lite would reach if only these kernels cost time; the profiler's per-call "
          "cost inflates the official total more (it makes more small calls), so the true floor is if anything higher.")
    print(json.dumps({"kernel_floor": {w: round(f, 3) for w, f in floors.items()}}))


def print_table(summary: dict, args, sanity: dict, lite_package: str):
    print(f"bagel_lite vs official BAGEL on {platform.machine()} ({os.cpu_count()} cores visible), one thread, "
          f"float32, golden tiny checkpoint; {args.rounds} alternating rounds, each process: load, "
          f"{args.warmup} warm-up, best of {args.repeat}")
    print(f"official code: {args.official} ({revision(args.official)}); bagel_lite: {lite_package} "
          f"({revision(args.lite_src)})" + (", compiled mode (Bagel.compile_decoder)" if args.compiled else ""))
    print("official side stand-ins (exact; they do not change the measured work):")
    for line in common.STAND_INS:
        print(f"  - {line}")
    print()
    cols = [("workload", 58), ("official", 22), ("bagel_lite", 22), ("ratio", 6), ("ratio per round", 15),
            ("CPU-time ratio (rounds)", 23), ("peak RSS MiB (run)", 22)]
    print("| " + " | ".join(f"{name:<{w}}" if i == 0 else f"{name:>{w}}" for i, (name, w) in enumerate(cols)) + " |")
    print("|" + "|".join("-" * (w + 1) + ":" if i else "-" * (w + 2) for i, (_, w) in enumerate(cols)) + "|")
    for s in summary.values():
        cells = [s["label"]]
        for side in ("official", "lite"):
            d = s[side]["wall"]
            if s["und"]:
                cells.append(f"{d['tokens_per_s']:.0f} tok/s ({fmt_range(d['round_tokens_per_s'], '{:.0f}'.format)})")
            else:
                cells.append(f"{d['best_s']:.2f} s ({fmt_range(d['round_best_s'], '{:.2f}'.format)})")
        cells += [f"{s['wall']['ratio']:.2f}x", fmt_range(s["wall"]["round_ratios"], "{:.2f}x".format),
                  f"{s['cpu']['ratio']:.2f}x ({fmt_range(s['cpu']['round_ratios'], '{:.2f}'.format)})",
                  f"{s['official']['peak_rss_mib']:.0f} ({s['official']['run_rss_mib']:.0f}) / "
                  f"{s['lite']['peak_rss_mib']:.0f} ({s['lite']['run_rss_mib']:.0f})"]
        print("| " + " | ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, (_, w)) in
                                enumerate(zip(cells, cols))) + " |")
    print()
    print("official, bagel_lite: best wall time over all rounds (range of the per-round bests; tokens/s for "
          "understanding). ratio: bagel_lite / official time, or bagel_lite / official tokens per second for "
          "understanding. CPU-time ratio: the same from process CPU time, which other programs on the machine "
          "disturb less. peak RSS: of each worker process (in brackets: growth during the workload over the RSS "
          "after loading), official / bagel_lite.")
    for w, (ok, what) in sanity.items():
        print(f"same work, {w}: {'yes' if ok else 'NO'} ({what})")
    if args.compiled:
        print("bagel_lite's first (warm-up) call, which compiles, slowest over the rounds: " + ", ".join(
            f"{w} {s['lite']['first_call_s']:.1f} s" for w, s in summary.items() if s["lite"]["first_call_s"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", type=Path, default=os.environ.get("BAGEL_OFFICIAL"),
                    help="checkout of ByteDance-Seed/Bagel (or $BAGEL_OFFICIAL)")
    ap.add_argument("--official-python", type=Path, default=os.environ.get("BAGEL_OFFICIAL_PYTHON"),
                    help="python of the official code's environment (or $BAGEL_OFFICIAL_PYTHON)")
    ap.add_argument("--lite-python", type=Path, default=Path(sys.executable), help="python with bagel_lite")
    ap.add_argument("--lite-src", type=Path, default=ROOT,
                    help="folder holding the bagel_lite package to measure (default: this checkout)")
    ap.add_argument("--golden", type=Path, default=GOLDEN, help="golden folder holding tiny_ckpt/ and images/")
    ap.add_argument("--workloads", nargs="+", default=list(common.DEFAULT_WORKLOADS), choices=list(common.WORKLOADS))
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (a fresh process per side each)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per process (best counts)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--profile", type=Path, help="write profiles of one run per side and workload here instead")
    ap.add_argument("--compiled", action="store_true",
                    help="run bagel_lite in its compiled mode (torch.compile of the decoder; the warm-up compiles)")
    args = ap.parse_args()
    if not args.official or not (args.official / "inferencer.py").is_file():
        ap.error("--official must name a checkout of ByteDance-Seed/Bagel (it holds inferencer.py)")
    if not args.official_python:
        ap.error("--official-python is required: a Python that can import the official code")
    args.official = args.official.resolve()
    if args.compiled and args.warmup < 1:
        ap.error("--compiled needs --warmup of at least 1: the first call compiles")

    if args.profile:
        for w in args.workloads:
            for side in ("official", "lite"):
                print(f"profiling {side} {w} ...", flush=True)
                run_worker(side, w, args, profile=args.profile)
        print(f"profiles in {args.profile}")
        kernel_floor(args.profile, args.workloads)
        return

    results = {w: [] for w in args.workloads}
    sanity = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for i, w in enumerate(args.workloads):
                order = ("official", "lite") if (r + i) % 2 == 0 else ("lite", "official")
                dumps = {s: Path(tmp) / f"{s}_{w}.pt" for s in order} if r == 0 else {}
                for side in order:
                    res = run_worker(side, w, args, dump=dumps.get(side))
                    results[w].append(res)
                    print(f"round {r + 1}/{args.rounds} {w:>8} {side:>8}: wall "
                          + " ".join(f"{t:.3f}" for t in res["times"]) + " s, CPU "
                          + " ".join(f"{t:.3f}" for t in res["cpu_times"]) + " s", file=sys.stderr, flush=True)
                if dumps:
                    sanity[w] = check_same_work(w, dumps)
    summary = {w: summarise(w, rs) for w, rs in results.items()}
    print_table(summary, args, sanity, next((r.get("package", "?") for r in results[args.workloads[0]]
                                             if r["side"] == "lite"), "?"))
    print(json.dumps({
        "threads": 1, "dtype": "float32", "compiled": args.compiled, "rounds": args.rounds, "repeat": args.repeat,
        "warmup": args.warmup,
        "same_work": {w: ok for w, (ok, _) in sanity.items()},
        "workloads": {w: {
            "ratio": round(s["wall"]["ratio"], 3), "round_ratios": [round(x, 3) for x in s["wall"]["round_ratios"]],
            "cpu_ratio": round(s["cpu"]["ratio"], 3),
            "cpu_round_ratios": [round(x, 3) for x in s["cpu"]["round_ratios"]],
            **{f"{side}_best_s": round(s[side]["wall"]["best_s"], 4) for side in ("official", "lite")},
            **{f"{side}_round_best_s": [round(x, 4) for x in s[side]["wall"]["round_best_s"]]
               for side in ("official", "lite")},
            **{f"{side}_cpu_best_s": round(s[side]["cpu"]["best_s"], 4) for side in ("official", "lite")},
            **({f"{side}_tokens_per_s": round(s[side]["wall"]["tokens_per_s"], 1) for side in ("official", "lite")}
               if s["und"] else {}),
            **{f"{side}_peak_rss_mib": s[side]["peak_rss_mib"] for side in ("official", "lite")},
            "lite_first_call_s": s["lite"]["first_call_s"],
        } for w, s in summary.items()},
    }))
    if not all(ok for ok, _ in sanity.values()):
        raise SystemExit("the two sides did not do the same work (see above)")


if __name__ == "__main__":
    main()
