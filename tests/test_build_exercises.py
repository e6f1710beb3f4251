"""The build-it-yourself exercises of notebooks 01-07: each check fails on the empty skeleton the notebook ships,
passes on the worked solution, and catches a plausible mistake."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bagel_lite.workbook import build

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = {"01": "01_patchification", "02": "02_positions", "03": "03_vae_latents", "04": "04_attention_masks",
         "05": "05_mot_routing", "06": "06_flow_matching", "07": "07_understanding"}
FUNCTIONS = {"01": "patchify_and_ids", "02": "rope", "03": "latent_tokens", "04": "sample_mask", "05": "mot_route",
             "06": "guided_euler_step", "07": "read_image"}


def tagged_cell(path: Path, tag: str) -> str:
    cells = [c for c in json.loads(path.read_text())["cells"] if tag in c["metadata"].get("tags", [])]
    assert len(cells) == 1, f"{path.name} must have one cell tagged {tag}"
    return "".join(cells[0]["source"])


def function_of(source: str, name: str):
    namespace: dict = {}
    exec(compile(source, name, "exec"), namespace)
    return namespace[name]


@pytest.mark.parametrize("n", sorted(NAMES))
def test_the_skeleton_fails_and_the_solution_passes(n):
    skeleton = function_of(tagged_cell(NOTEBOOKS / f"{NAMES[n]}.ipynb", "build-skeleton"), FUNCTIONS[n])
    verdict = build.check(n, skeleton)
    assert not verdict.passed and "NotImplementedError" in verdict.message and "Hint:" in verdict.message
    solution_cell = tagged_cell(NOTEBOOKS / "solutions" / f"{NAMES[n]}_solutions.ipynb", "build-solution")
    solution = function_of(solution_cell.split("\n\n\nfrom bagel_lite")[0], FUNCTIONS[n])
    assert build.check(n, solution).passed
    # the notebook's check cell names the same function
    notebook = json.loads((NOTEBOOKS / f"{NAMES[n]}.ipynb").read_text())
    assert any(f'build.check("{n}", {FUNCTIONS[n]})' in "".join(c["source"]) for c in notebook["cells"])


def test_plausible_mistakes_are_caught_and_located():
    def ids_with_image_width(image, patch, max_per_side):  # 01: the image's width as the stride
        rows, cols = image.shape[1] // patch, image.shape[2] // patch
        patches = image.reshape(3, rows, patch, cols, patch).permute(1, 3, 2, 4, 0).reshape(rows * cols, -1)
        return patches, torch.arange(rows * cols)

    def mask_without_noise_rule(split_lens, attn_modes):  # 04: forgets to hide noise splits
        n, start = sum(split_lens), 0
        allowed = torch.zeros(n, n, dtype=torch.bool)
        for size, mode in zip(split_lens, attn_modes):
            allowed[start:start + size, :start] = True
            block = torch.ones(size, size, dtype=torch.bool)
            allowed[start:start + size, start:start + size] = block.tril() if mode == "causal" else block
            start += size
        return allowed

    def step_without_renorm(x, v_c, v_text, v_img, t, t_next, cfg_text, cfg_img, renorm_min):  # 06
        guided = v_img + cfg_img * (v_text + cfg_text * (v_c - v_text) - v_img)
        return x - guided * (t - t_next)

    def causal_image(q, k_new, v_new, k_cache, v_cache):  # 07: a causal mask inside the image
        k, v = torch.cat([k_cache, k_new], 2), torch.cat([v_cache, v_new], 2)
        kq, vq = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
        mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool).tril(k.shape[2] - q.shape[2])
        return torch.nn.functional.scaled_dot_product_attention(q, kq, vq, attn_mask=mask), k, v

    for n, wrong, words in (("01", ids_with_image_width, "result 2"), ("04", mask_without_noise_rule, "entries differ"),
                            ("06", step_without_renorm, "values differ"), ("07", causal_image, "result 1")):
        verdict = build.check(n, wrong)
        assert not verdict.passed and words in verdict.message, (n, verdict.message)


def test_an_error_inside_the_learners_code_is_reported_not_raised():
    def broken(z, scale, shift):
        return z.reshape(7, -1)

    verdict = build.check("03", broken)
    assert not verdict.passed and "RuntimeError" in verdict.message
    with pytest.raises(ValueError, match="exercises are"):
        build.check("99", broken)
