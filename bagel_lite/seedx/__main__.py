"""``python -m bagel_lite.seedx ablate [--out DIR]`` and ``python -m bagel_lite.seedx evaluate [--folder DIR]``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .road import CHECKPOINT, load
from .train import AblationSettings, ablate, measure


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bagel_lite.seedx", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    a = sub.add_parser("ablate", help="train the toy SEED-X from scratch and print the measured curves")
    a.add_argument("--out", type=Path, default=CHECKPOINT, help=f"folder to write (default {CHECKPOINT})")
    a.add_argument("--seed", type=int, default=AblationSettings.seed)
    e = sub.add_parser("evaluate", help="measure the weights of a folder again; ends with one JSON line")
    e.add_argument("--folder", type=Path, default=CHECKPOINT)
    e.add_argument("--prompts", type=int, default=40, help="held-out captions for text-to-image")
    args = ap.parse_args(argv)

    start = time.time()
    if args.command == "ablate":
        metrics = ablate(args.out, AblationSettings(seed=args.seed))
        print(f"wrote {args.out} in {time.time() - start:.0f} s")
    else:
        metrics = measure(load(args.folder), eval_prompts=args.prompts)
        metrics["seconds"] = round(time.time() - start, 1)
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
