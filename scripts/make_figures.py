"""Regenerate figures/ by executing every notebook with BAGEL_LITE_FIGURES pointing there.

    python scripts/make_figures.py            # all notebooks
    python scripts/make_figures.py 02 04      # notebooks whose names start with these prefixes

Each notebook saves its figures with ``bagel_lite.workbook.viz.save_figure``; nothing is drawn by hand.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from build_book import execute  # the one way the scripts execute a notebook

ROOT = Path(__file__).resolve().parents[1]


def main(prefixes: list[str]) -> None:
    os.environ["BAGEL_LITE_FIGURES"] = str(ROOT / "figures")
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    if prefixes:
        notebooks = [nb for nb in notebooks if any(nb.name.startswith(p) for p in prefixes)]
    for path in notebooks:
        start = time.time()
        execute(nbformat.read(path, as_version=4), path)
        print(f"{path.name:<40} {time.time() - start:5.1f} s")
    print("figures in", ROOT / "figures")


if __name__ == "__main__":
    main(sys.argv[1:])
