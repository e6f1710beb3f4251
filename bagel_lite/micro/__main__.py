"""``python -m bagel_lite.micro train [--quick] [--out DIR] [--seed N]`` and
``python -m bagel_lite.micro evaluate [--folder DIR] [--seed S]``.

``train --out DIR`` runs the long recipe that made the shipped checkpoint (about 78 minutes on 2 cores; it saves
a resumable state every few minutes next to the output folder, and the same command continues a stopped run);
it writes over the shipped checkpoint only with ``--overwrite-shipped``. ``train --quick`` is the learner's
recipe: a smaller model in under 10 minutes, written to ./micro-bagel-quick. Under
``torchrun --nproc_per_node N -m bagel_lite.micro train ...`` the processes share each step's packed sequences
(data parallel, gloo on CPUs); ``--micro-batches K`` on one process accumulates the same K sequences.
``evaluate`` scores a folder on held-out scenes drawn with ``--seed`` (any seed gives a fresh set).

Both say which CPU path they take and on how many threads. Training runs on one thread (its bits depend on
the count); its autoencoder uses bf16 autocast only on CPUs with native bf16 (``BAGEL_LITE_CPU_BF16=0``/``1``
forces float32 / bf16). Evaluation takes the cores other jobs leave free (``--threads N`` to choose): on a busy
2-core machine two threads beside another job ran 40 times slower than one.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from accelerate import PartialState

from ..training.optimization import cpu_threads
from ..training.precision import choose_threads, cpu_path
from . import CHECKPOINT, load
from .evaluate import evaluate_model, metrics_table
from .train import RECIPES, default_state_path, train

QUICK_OUT = Path("micro-bagel-quick")


def evaluate(folder: Path, seed: int, quick: bool, threads: int | None = None, progress: bool = True) -> dict:
    """Score ``folder`` on held-out scenes (``quick``: a quarter of them), on ``threads`` CPU threads (default:
    the cores other jobs leave free), with progress bars on stderr."""
    n, why = choose_threads(threads)
    print(f"evaluating {folder} on {n} thread(s): {why}" + ("" if threads else " (--threads N to choose)"), flush=True)
    start = time.time()
    scale = 4 if quick else 1
    with cpu_threads(n):
        metrics = evaluate_model(load(folder), n_t2i=100 // scale, n_vqa=200 // scale, n_edit=100 // scale,
                                 seed=seed, n_ae=200 // scale, progress=progress)
    metrics["evaluate_seconds"] = round(time.time() - start, 1)
    metrics["evaluate_threads"] = n
    return metrics


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bagel_lite.micro", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the autoencoder and micro-BAGEL from scratch (or resume)")
    t.add_argument("--quick", action="store_true", help="the learner's recipe: a smaller model, under 10 minutes")
    t.add_argument("--out", type=Path, default=None,
                   help=f"checkpoint folder to write (with --quick: ./{QUICK_OUT} by default)")
    t.add_argument("--overwrite-shipped", action="store_true",
                   help=f"write the long recipe's result over the shipped checkpoint ({CHECKPOINT})")
    t.add_argument("--micro-batches", type=int, default=None,
                   help="packed sequences per step (default: one per process; under torchrun each process "
                        "trains on its share)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--watch", type=int, default=0, metavar="N",
                   help="every N steps, draw 4 fixed held-out prompts and ask 4 questions into the log (notebook 05b)")
    t.add_argument("--dense", action="store_true",
                   help="a dense model (every token through one expert): the baseline MoT is measured against")
    t.add_argument("--state", type=Path, default=None,
                   help="resumable state folder (default: .<out>.train_state beside the output folder)")
    t.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    t.add_argument("--threads", type=int, default=None,
                   help="threads of the evaluation after training (training itself always runs on one)")
    e = sub.add_parser("evaluate", help="score a checkpoint on held-out scenes; ends with one JSON line")
    e.add_argument("--folder", type=Path, default=CHECKPOINT)
    e.add_argument("--seed", type=int, default=10_000, help="which held-out draw (any seed: a fresh set)")
    e.add_argument("--quick", action="store_true", help="a quarter of the samples (for smoke tests)")
    e.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: the cores that other jobs leave free; 1 is steady on a busy machine)")
    args = ap.parse_args(argv)

    if args.command == "evaluate":
        metrics = evaluate(args.folder, args.seed, args.quick, args.threads)
    else:
        recipe = "quick" if args.quick else "long"
        if args.out is None and not args.quick and not args.overwrite_shipped:
            ap.error(f"the long recipe needs --out DIR (or --overwrite-shipped to replace {CHECKPOINT})")
        out = args.out or (QUICK_OUT if args.quick else CHECKPOINT)
        settings = replace(RECIPES[recipe], seed=args.seed, mot=not args.dense, watch_every=args.watch,
                           micro_batches=args.micro_batches or PartialState().num_processes)
        stats = train(out, settings, state_path=args.state or default_state_path(out))
        if not PartialState().is_main_process:
            return
        print(f"wrote {out} ({recipe} recipe) in {stats['train_seconds']:.0f} s of training, autoencoder on the "
              f"{stats['cpu_path']} path")
        if args.no_eval:
            return
        metrics = evaluate(out, 10_000, quick=False, threads=args.threads)
        metrics.update(recipe=recipe, train_seconds=stats["train_seconds"], cpu_path=cpu_path().name)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(metrics_table(metrics))
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
