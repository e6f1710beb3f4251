"""Build it yourself: the learner writes one piece of BAGEL, and ``check(name, fn)`` runs it beside the package's
own code on random inputs and says where it differs.

Each notebook from 01 to 07 has one such exercise: a skeleton cell (a function that raises
``NotImplementedError``), then ``build.check("01", patchify_and_ids)``. The check never raises: it prints a verdict
("Right: ..." or "Not yet: ..." with what differed, where, and a hint) and returns it, so a notebook runs top to
bottom with the skeleton still empty. The worked solutions are in ``notebooks/solutions/``.

The pieces, each checked against the package's own functions:

* 01 ``patchify_and_ids(image, patch, max_per_side)``: NaViT patches and their flattened ids (``patchify``,
  ``position_ids_extrapolate``);
* 02 ``rope(x, position_ids, theta)``: 1D RoPE at packed positions, an image sharing one (``rope_cos_sin``,
  ``apply_rope``);
* 03 ``latent_tokens(z, scale, shift)``: a latent as the LLM reads it (``scale * (z - shift)``, ``patchify(., 2)``);
* 04 ``sample_mask(split_lens, attn_modes)``: one sample's causal / full / noise mask (``masks.sample_allowed``);
* 05 ``mot_route(x, gen_mask, und, gen)``: each token through its own expert (``qwen2_mot.by_expert``);
* 06 ``guided_euler_step(x, v_c, v_text, v_img, t, t_next, ...)``: CFG, global renorm, one step
  (``flow.guided_velocity``, ``flow.euler_step``);
* 07 ``read_image(q, k_new, v_new, k_cache, v_cache)``: image tokens read through the KV cache
  (``attention.attend``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Verdict:
    passed: bool
    message: str

    def __repr__(self) -> str:  # what the notebook shows
        return self.message


@dataclass
class Case:
    """One random input: the arguments for the learner's function, and the package's answer."""

    args: tuple
    expected: object
    about: str  # the input in words, for the message


# --- the package's answers on random inputs ---------------------------------------------------------------


def _cases_01(rng: random.Random, g: torch.Generator) -> list[Case]:
    from ..model.patchify import patchify, position_ids_extrapolate

    cases = []
    for rows, cols, p, side in ((2, 3, 4, 5), (3, 3, 2, 4), (1, 4, 3, 6)):
        image = torch.randn(3, rows * p, cols * p, generator=g)
        expected = (patchify(image, p), position_ids_extrapolate(rows * p, cols * p, p, side))
        cases.append(Case((image, p, side), expected, f"a {rows * p}x{cols * p} image, {p}-pixel patches, "
                                                       f"a {side}-wide position table"))
    return cases


def _cases_02(rng: random.Random, g: torch.Generator) -> list[Case]:
    from ..model.positions import apply_rope, rope_cos_sin

    positions = torch.tensor([0, 1, 2, 3, 3, 3, 3, 3, 4, 5])  # text, an image of 5 tokens at one position, text
    x = torch.randn(len(positions), 2, 8, generator=g)  # (L, heads, head_dim)
    cos, sin = rope_cos_sin(positions, 8, 10_000.0, torch.float32)  # (L, head_dim)
    expected = apply_rope(x, cos[:, None], sin[:, None])
    return [Case((x, positions, 10_000.0), expected, "10 tokens (an image of 5 at position 3), 2 heads of 8")]


def _cases_03(rng: random.Random, g: torch.Generator) -> list[Case]:
    from ..model.patchify import patchify

    cases = []
    for h, w in ((4, 6), (2, 2)):
        z = torch.randn(16, h, w, generator=g)
        scale, shift = 0.3611, 0.1159  # FLUX's
        cases.append(Case((z, scale, shift), patchify(scale * (z - shift), 2), f"a (16, {h}, {w}) latent"))
    return cases


def _cases_04(rng: random.Random, g: torch.Generator) -> list[Case]:
    from ..model.masks import sample_allowed

    cases = []
    samples = (([3, 4, 2], ["causal", "full", "causal"]), ([2, 3, 4, 2], ["full", "causal", "noise", "causal"]),
               ([4, 3, 3], ["causal", "noise", "full"]))
    for lens, modes in samples:
        cases.append(Case((lens, modes), sample_allowed(lens, modes), f"splits {lens} of modes {modes}"))
    return cases


def _cases_05(rng: random.Random, g: torch.Generator) -> list[Case]:
    from ..model.qwen2_mot import by_expert

    und, gen = torch.nn.Linear(6, 6), torch.nn.Linear(6, 6)
    with torch.no_grad():
        for layer in (und, gen):
            layer.weight.copy_(torch.randn(6, 6, generator=g))
            layer.bias.copy_(torch.randn(6, generator=g))
    x = torch.randn(9, 6, generator=g)  # (L, D)
    gen_mask = torch.tensor([False, False, True, True, True, False, True, False, False])
    with torch.no_grad():
        expected = by_expert(x[None], gen_mask[None], und, gen)[0]
    return [Case((x, gen_mask, und, gen), expected, "9 tokens of width 6, 4 of them latent tokens"),
            Case((x, torch.zeros(9, dtype=torch.bool), und, gen), und(x).detach(), "9 text tokens, no latent")]


def _cases_06(rng: random.Random, g: torch.Generator) -> list[Case]:
    from ..inference.flow import euler_step, guided_velocity

    cases = []
    for rmin in (0.0, 1.0):
        x, v_c, v_text, v_img = (torch.randn(8, 64, generator=g) for _ in range(4))
        v = guided_velocity(v_c, v_text, v_img, 4.0, 2.0, cfg_renorm_type="global", cfg_renorm_min=rmin)
        expected = euler_step(x, v, 0.8, 0.7)
        cases.append(Case((x, v_c, v_text, v_img, 0.8, 0.7, 4.0, 2.0, rmin), expected,
                          f"8 latent tokens, t 0.8 -> 0.7, cfg_text 4, cfg_img 2, cfg_renorm_min {rmin}"))
    return cases


def _cases_07(rng: random.Random, g: torch.Generator) -> list[Case]:
    from ..model.attention import attend

    q = torch.randn(1, 4, 5, 8, generator=g)  # (B, query heads, new tokens, head_dim)
    k_new, v_new = torch.randn(1, 2, 5, 8, generator=g), torch.randn(1, 2, 5, 8, generator=g)  # 2 KV heads
    k_cache, v_cache = torch.randn(1, 2, 7, 8, generator=g), torch.randn(1, 2, 7, 8, generator=g)
    k, v = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)  # (B, 2, 12, 8)
    expected = (attend(q, k, v, None), k, v)  # an image is a full split: every new token sees everything
    return [Case((q, k_new, v_new, k_cache, v_cache), expected,
                 "5 image tokens, 7 cached tokens, 4 query heads sharing 2 key/value heads")]


CASES: dict[str, Callable] = {"01": _cases_01, "02": _cases_02, "03": _cases_03, "04": _cases_04, "05": _cases_05,
                              "06": _cases_06, "07": _cases_07}

HINTS = {
    "01": "patches are read row by row, each flattened as (p, q, channel); a patch at (row, col) has id "
          "row * max_per_side + col (the table's width, not the image's)",
    "02": "pair dimension i with i + d/2; the angle of position p is p * theta^(-2i/d); x*cos + rotate_half(x)*sin",
    "03": "first scale * (z - shift), then 2x2 patches of 16 channels: 64 features ordered (p, q, channel)",
    "04": "every split sees the earlier splits and itself (causal: lower triangle); then hide each noise split "
          "from every other split (it still sees itself)",
    "05": "gather the rows of each expert, apply that expert, scatter them back to their places",
    "06": "text CFG on v_text, then image CFG on v_img, then scale by ||v_c|| / ||guided|| clamped to "
          "[cfg_renorm_min, 1], then x - v * (t - t_next)",
    "07": "append the new keys/values to the cache; repeat each KV head for its query heads; softmax(q k^T / "
          "sqrt(d)) v with no mask (an image sees the cache and all its tokens)",
}


def _compare(got, expected, where: str) -> str | None:
    """None if equal (within float tolerance), else what differs."""
    if isinstance(expected, tuple):
        if not isinstance(got, tuple | list) or len(got) != len(expected):
            return f"{where}: expected {len(expected)} results (a tuple), got {type(got).__name__}"
        for i, (a, b) in enumerate(zip(got, expected)):
            problem = _compare(a, b, f"{where}, result {i + 1}")
            if problem:
                return problem
        return None
    if not isinstance(got, torch.Tensor):
        return f"{where}: expected a tensor, got {type(got).__name__}"
    if tuple(got.shape) != tuple(expected.shape):
        return f"{where}: shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
    if expected.dtype == torch.bool or not expected.is_floating_point():
        wrong = (got.to(expected.dtype) != expected).nonzero()
        if len(wrong):
            return f"{where}: {len(wrong)} entries differ, the first at index {tuple(wrong[0].tolist())}"
        return None
    diff = (got.float() - expected.float()).abs()
    if not torch.isfinite(diff).all() or float(diff.max()) > 1e-5 * (1 + float(expected.abs().max())):
        index = tuple(int(i) for i in torch.nonzero(diff == diff.max())[0].tolist())
        return f"{where}: values differ by up to {float(diff.max()):.3g}, first at index {index}"
    return None


def check(name: str, fn: Callable, *, seed: int = 0) -> Verdict:
    """Run the learner's ``fn`` on the random inputs of exercise ``name`` beside the package's answers. The
    verdict shows itself as the cell's output."""
    if name not in CASES:
        raise ValueError(f"no build exercise {name!r}; the exercises are {sorted(CASES)}")
    cases = CASES[name](random.Random(seed), torch.Generator().manual_seed(seed))
    verdict = Verdict(True, f"Right: your function agrees with the package on all {len(cases)} input(s).")
    for case in cases:
        try:
            with torch.no_grad():
                got = fn(*case.args)
        except NotImplementedError:
            verdict = Verdict(False, "Not yet: the skeleton still raises NotImplementedError — write its body. "
                                     f"Hint: {HINTS[name]}")
            break
        except Exception as e:  # the learner's code: say what went wrong, do not stop the notebook
            verdict = Verdict(False, f"Not yet: on {case.about}, your function raised {type(e).__name__}: {e}. "
                                     f"Hint: {HINTS[name]}")
            break
        problem = _compare(got, case.expected, f"on {case.about}")
        if problem:
            verdict = Verdict(False, f"Not yet: {problem}. Hint: {HINTS[name]}")
            break
    return verdict
