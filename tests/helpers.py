"""Paths and helpers shared by the tests (imported as ``helpers``; fixtures live in conftest.py)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The public golden set ships with the repository (tests/golden: a tiny official-format checkpoint and the official
# code's outputs on it); BAGEL_LITE_GOLDEN points the same tests at another set of the same layout.
GOLDEN = Path(os.environ.get("BAGEL_LITE_GOLDEN", REPO / "tests" / "golden")).resolve()
REFERENCE = REPO / "tests" / "reference"  # every key and shape of BAGEL-7B-MoT and of FLUX's autoencoder


def golden_cases() -> dict:
    path = GOLDEN / "cases.json"
    if not path.is_file():
        raise FileNotFoundError(f"no golden cases at {path}: set BAGEL_LITE_GOLDEN to a golden folder")
    return json.loads(path.read_text())


def tolerance(text: str) -> tuple[float, float]:
    """(atol, rtol) from a cases.json tolerance string such as 'atol 1e-4, rtol 1e-4' or 'exact'.

    For mixed strings ('text ids exact; latents atol 2e-3, rtol 2e-3') the float part is returned.
    """
    atol = re.search(r"atol\s*([0-9.eE+-]+)", text)
    rtol = re.search(r"rtol\s*([0-9.eE+-]+)", text)
    if atol is None:
        return 0.0, 0.0
    return float(atol.group(1)), float(rtol.group(1)) if rtol else 0.0
