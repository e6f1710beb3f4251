"""Store the MoT-vs-dense comparison that notebook 05 reads: two quick-recipe runs, the same in everything but
routing, their loss curves and held-out scores, in one small JSON.

    python -m bagel_lite.micro train --quick --out runs/q-mot            # ~9 min on one core each, then ~2 min
    python -m bagel_lite.micro train --quick --dense --out runs/q-dense  # of evaluation (seed 10,000)
    python scripts/mot_vs_dense.py runs/q-mot runs/q-dense   # -> bagel_lite/micro/checkpoint/mot_vs_dense.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bagel_lite" / "micro" / "checkpoint" / "mot_vs_dense.json"
EVERY = 10  # one curve point per 10 steps: the mean of those steps (steps without that loss left out)


def curve(values: list[float]) -> list[float | None]:
    points = []
    for i in range(0, len(values), EVERY):
        chunk = [v for v in values[i:i + EVERY] if v > 0]  # a step without questions has no CE
        points.append(round(sum(chunk) / len(chunk), 4) if chunk else None)
    return points


def run(folder: Path) -> dict:
    log = json.loads((folder / "train_log.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    scores = {k: v for k, v in metrics.items() if k.startswith(("t2i_", "vqa_", "edit_")) and isinstance(v, float)}
    return {"ce": curve(log["loss"]["ce"]), "mse": curve(log["loss"]["mse"]), "scores": scores,
            "train_seconds": log["train_seconds"], "cpu_path": log["cpu_path"],
            "mot": log["settings"].get("mot", True), "align_steps": log["settings"]["align_steps"]}


def main(mot: Path, dense: Path) -> None:
    a, b = run(mot), run(dense)
    if not a["mot"] or b["mot"]:
        sys.exit("give the MoT run's folder first, then the dense one (train --quick --dense)")
    OUT.write_text(json.dumps({"recipe": "quick", "evaluation_seed": 10_000, "every": EVERY,
                               "runs": {"MoT": a, "dense": b}}, separators=(",", ":")))
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
