"""Shared fixtures. The golden folder comes from BAGEL_LITE_GOLDEN (default ../shared/reference/golden)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference"
GOLDEN = Path(os.environ.get("BAGEL_LITE_GOLDEN", REFERENCE / "golden")).resolve()


def golden_cases() -> dict:
    path = GOLDEN / "cases.json"
    if not path.is_file():
        raise FileNotFoundError(f"no golden cases at {path}: set BAGEL_LITE_GOLDEN to a golden folder")
    return json.loads(path.read_text())


def tolerance(text: str, kind: str = "float") -> tuple[float, float]:
    """(atol, rtol) from a cases.json tolerance string such as 'atol 1e-4, rtol 1e-4' or 'exact'.

    For mixed strings ('text ids exact; latents atol 2e-3, rtol 2e-3') the float part is returned.
    """
    atol = re.search(r"atol\s*([0-9.eE+-]+)", text)
    rtol = re.search(r"rtol\s*([0-9.eE+-]+)", text)
    if atol is None:
        return 0.0, 0.0
    return float(atol.group(1)), float(rtol.group(1)) if rtol else 0.0


@pytest.fixture(scope="session")
def golden() -> dict:
    return golden_cases()


@pytest.fixture(scope="session")
def golden_bagel():
    from bagel_lite.checkpoint import load_bagel

    return load_bagel(GOLDEN / "tiny_ckpt")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
