"""Train micro-BAGEL from scratch on this machine and compare with the shipped checkpoint.

    python benchmarks/micro_train.py [--seed 0] [--out DIR]

Prints the time of each phase, a quick evaluation every 1000 steps, the final metrics (the gates of the
micro-BAGEL issue: t2i colour >= 0.90, t2i position >= 0.80, VQA >= 0.90, edit success >= 0.70), and the
difference from bagel_lite/micro/checkpoint/metrics.json. Takes about 15 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bagel_lite import micro
from bagel_lite.micro.evaluate import evaluate_model, metrics_table
from bagel_lite.micro.train import TrainSettings, train

GATES = {"t2i_color_acc": 0.90, "t2i_position_acc": 0.80, "vqa_acc": 0.90, "edit_success": 0.70}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=TrainSettings.seed)
    ap.add_argument("--out", type=Path, default=None, help="folder to write (default: a temporary folder)")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="micro-bagel-"))

    start = time.time()
    stats = train(out, TrainSettings(seed=args.seed), eval_every=1000,
                  log=lambda m: print(f"[{time.time() - start:6.0f} s] {m}", flush=True))
    metrics = evaluate_model(micro.load(out), progress=False)
    print(metrics_table(metrics))
    print(f"training took {stats['train_seconds']:.0f} s (limit 900 s)")
    shipped = json.loads((micro.CHECKPOINT / "metrics.json").read_text())
    print(f"{'gate':<20}{'this run':>10}{'shipped':>10}{'needed':>10}")
    for key, needed in GATES.items():
        print(f"{key:<20}{metrics[key]:>10.3f}{shipped[key]:>10.3f}{needed:>10.2f}")
    print(json.dumps({"train_seconds": stats["train_seconds"], **metrics}))


if __name__ == "__main__":
    main()
