"""Fixtures shared by the tests. Paths and helpers are in helpers.py."""

from __future__ import annotations

import pytest
import torch
from helpers import GOLDEN, golden_cases


@pytest.fixture(scope="session")
def golden() -> dict:
    return golden_cases()


@pytest.fixture(scope="session")
def golden_bagel():
    from bagel_lite.loading.checkpoint import load_bagel

    return load_bagel(GOLDEN / "tiny_ckpt")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
