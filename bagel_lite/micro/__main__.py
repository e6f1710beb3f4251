"""``python -m bagel_lite.micro train [--out DIR] [--seed N]`` and ``python -m bagel_lite.micro evaluate``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from . import CHECKPOINT, load
from .evaluate import evaluate_model, metrics_table
from .train import TrainSettings, train


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bagel_lite.micro", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the autoencoder and micro-BAGEL from scratch")
    t.add_argument("--out", type=Path, default=CHECKPOINT, help=f"checkpoint folder to write (default {CHECKPOINT})")
    t.add_argument("--seed", type=int, default=TrainSettings.seed)
    t.add_argument("--steps", type=int, default=TrainSettings.steps, help="micro-BAGEL optimizer steps")
    t.add_argument("--ae-steps", type=int, default=TrainSettings.ae_steps, help="autoencoder optimizer steps")
    t.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    t.add_argument("--eval-every", type=int, default=0, help="print a quick evaluation every N steps")
    e = sub.add_parser("evaluate", help="score a checkpoint on held-out scenes; ends with one JSON line")
    e.add_argument("--folder", type=Path, default=CHECKPOINT)
    e.add_argument("--quick", action="store_true", help="a third of the samples (for smoke tests)")
    args = ap.parse_args(argv)

    if args.command == "train":
        start = time.time()
        settings = TrainSettings(seed=args.seed, steps=args.steps, ae_steps=args.ae_steps)
        stats = train(args.out, settings, eval_every=args.eval_every)
        print(f"wrote {args.out} in {time.time() - start:.0f} s")
        if args.no_eval:
            return
        args.folder, args.quick = args.out, False
    start = time.time()
    scale = 3 if args.quick else 1
    metrics = evaluate_model(load(args.folder), n_t2i=40 // scale, n_vqa=120 // scale, n_edit=40 // scale,
                             progress=False)
    metrics["evaluate_seconds"] = round(time.time() - start, 1)
    if args.command == "train":
        metrics["train_seconds"] = stats["train_seconds"]
        (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(metrics_table(metrics))
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
