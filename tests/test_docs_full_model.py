"""docs/full_model.md: its memory table is the package's estimator's, and its commands name the release."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bagel_lite.loading.devices import GiB, estimate_memory
from bagel_lite.model.config import full

PAGE = Path(__file__).resolve().parents[1] / "docs" / "full_model.md"


def test_the_memory_table_is_what_the_estimator_says():
    rows = {m.group(1): [float(x) for x in m.group(2).split("|") if x.strip()]
            for m in re.finditer(r"^\| (bf16|NF4|INT8) \|(.*)\|$", PAGE.read_text(), re.M)}
    assert set(rows) == {"bf16", "NF4", "INT8"}
    for mode, values in rows.items():
        quantize = None if mode == "bf16" else mode.lower()
        want = [estimate_memory(full(), image_side=side, cfg_branches=branches, quantize=quantize,
                                context_tokens=100 if branches == 2 else None).total / GiB
                for branches, side in ((2, 512), (2, 1024), (3, 512), (3, 1024))]
        assert values == pytest.approx(want, abs=0.051), mode
    # quantized weights are smaller, and a bigger edit needs more than a smaller one
    assert rows["NF4"][3] < rows["INT8"][3] < rows["bf16"][3] and rows["bf16"][2] < rows["bf16"][3]


def test_the_page_names_the_release_and_the_files_the_loader_needs():
    text = PAGE.read_text()
    assert "ByteDance-Seed/BAGEL-7B-MoT" in text and "--local-dir models/BAGEL-7B-MoT" in text
    from bagel_lite.loading.checkpoint import TOKENIZER_FILES

    for name in ("ema.safetensors", "ae.safetensors", "llm_config.json", "vit_config.json", *TOKENIZER_FILES):
        assert f"`{name}`" in text, name
    with pytest.raises(ValueError, match="unknown"):
        estimate_memory(full(), quantize="int4")
