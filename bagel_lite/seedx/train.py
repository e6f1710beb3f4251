"""The SEED-X ablation at toy scale: train every part from scratch, then measure SEED-X's four findings.

``python -m bagel_lite.seedx ablate`` runs, on top of the shipped micro-BAGEL (its frozen ViT, autoencoder,
language model and tokenizer):

1. **base** — pre-train the toy SDXL: a denoiser drawing the world's images from captions (frozen LLM states).
2. **de-tokenizers** — for N = 1, 4, 16, 64 pooled embeddings, adapt the base to ViT embeddings, training
   only the resampler and the cross-attention keys and values (SEED-X's choice); for N = 16 also with
   every weight trained ("full"), to compare.
3. **regressors** — for each N, the LLM (LoRA) with N query tokens and the one-layer cross-attention head,
   trained with 6.0 x MSE + 1.0 x language loss; for N = 16 also with a 4-layer resampler head ("deep").
4. **measurements** (``measure``, with ``evaluate``'s scores) on scenes no training step saw:
   reconstruction error vs N; regression error vs N (next to the floor no caption-only model can beat:
   captions do not say the 2-px jitter); text-to-image accuracy through the whole road vs N and vs head,
   scored by the micro-world evaluator next to micro-BAGEL.

N = 16 plays the part of SEED-X's 64: both are the stitched grid pooled 4x (SEED-X: 256 -> 64; here 64 -> 16).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..micro.data import image_batch
from ..micro.evaluate import attribute_accuracy, held_out_prompts
from ..micro.world import Scene, caption
from ..training.optimization import cosine_lr, cpu_threads, optimizer_step, set_lr
from .detokenizer import (
    CaptionConditioner,
    Denoiser,
    DenoiserConfig,
    DeTokenizer,
    SamplerSettings,
    caption_states,
    flow_matching_loss,
    to_tokens,
)
from .evaluate import CaptionFloor, held_out_scenes, reconstruction_scores, regression_scores, split, t2i_scores
from .llm import QueryRegressor
from .road import BASE, HEADS, SeedX, base_holder, detokenizer_file, regressor_file, save_tensors
from .visual_tokenizer import N_CHOICES, gray_image, pool, standardize, vit_grid


@dataclass
class AblationSettings:
    seed: int = 0
    test_scenes: int = 120  # held out from every training step
    batch: int = 64
    base_steps: int = 1600
    base_lr: float = 2e-3
    detok_steps: int = 1200
    detok_lr: float = 1e-3
    llm_steps: int = 1000
    llm_batch: int = 32
    llm_lr: float = 3e-3
    warmup: int = 50
    cond_dropout: float = 0.1  # condition -> negative (classifier-free guidance)
    rec_loss_scale: float = 6.0  # SEED-X's weights: 6.0 x MSE on embeddings ...
    lm_loss_scale: float = 1.0  # ... next to 1.0 x the language loss
    lora_rank: int = 8
    compare_n: int = 16  # where the head and fine-tuning comparisons run (SEED-X's 64, pooled 4x)
    eval_prompts: int = 40  # held-out captions for text-to-image (micro-BAGEL's evaluation protocol)
    caption_layers: int = 3
    threads: int | None = None


DENOISER = DenoiserConfig()
RESAMPLER = {"num_queries": 16, "resampler_depth": 1}
SAMPLER = SamplerSettings()


# --- the world as tables ----------------------------------------------------------------------------------

@dataclass
class Tables:
    scenes: list[Scene]
    train: list[int]
    test: list[int]
    pixels: torch.Tensor  # (S, 3, 64, 64) in [-1, 1]
    tokens: torch.Tensor  # (S, 16, 64) latent tokens (posterior means), the denoisers' targets
    grid: torch.Tensor  # (S, 8, 8, 64) stitched ViT embeddings
    gray: torch.Tensor  # (1, 8, 8, 64) those of the all-zero image


@torch.no_grad()
def world_tables(pipe, s: AblationSettings, log=print) -> Tables:
    start = time.time()
    scenes, train, test = split(s.seed, s.test_scenes)
    pixels = image_batch(scenes)
    latents = torch.cat([pipe.ae.encode(pixels[i:i + 256], sample=False)
                         for i in tqdm(range(0, len(scenes), 256), desc="encoding the world", leave=False)])
    tables = Tables(scenes, train, test, pixels, to_tokens(latents), vit_grid(pipe.model, pixels),
                    vit_grid(pipe.model, gray_image()))
    log(f"tables: {len(scenes)} scenes ({len(train)} train, {len(test)} test) in {time.time() - start:.0f} s")
    return tables


def visual_stats(tables: Tables) -> dict[str, torch.Tensor]:
    """Mean and std over the training scenes of the pooled embeddings, per N (std floored at 1e-2)."""
    stats = {}
    for n in N_CHOICES:
        pooled = pool(tables.grid[tables.train], n)  # (S_train, n, D)
        stats[f"n{n}.mean"] = pooled.mean(0)
        stats[f"n{n}.std"] = pooled.std(0).clamp(min=1e-2)
    return stats


class CaptionTable:
    """Frozen caption states of every caption the world can write (and of the empty caption)."""

    def __init__(self, pipe, scenes: list[Scene], layers: int):
        texts = sorted({caption(sc, size=with_size) for sc in scenes for with_size in (True, False)} | {""})
        self.row = {t: i for i, t in enumerate(texts)}
        self.states, self.valid = caption_states(pipe.model, pipe.tokenizer, pipe.special, texts, layers)  # (C, T, D)

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.row[t] for t in texts]
        return self.states[rows], self.valid[rows]


# --- training loops ---------------------------------------------------------------------------------------

def _optimize(params, steps: int, lr: float, warmup: int, loss_fn, *, desc: str, log) -> None:
    """``steps`` AdamW steps on ``loss_fn() -> (loss, what to show)``: cosine schedule, gradients clipped to 1."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    bar = tqdm(range(steps), desc=desc, leave=False)
    for step in bar:
        set_lr(opt, cosine_lr(step, steps, lr, warmup, 0.1))
        loss, shown = loss_fn()
        optimizer_step(opt, loss, clip=params)
        if step % 10 == 0:
            bar.set_postfix(shown)
    log(f"  {desc}: " + "  ".join(f"{k} {v}" for k, v in shown.items()))


def train_base(pipe, tables: Tables, captions: CaptionTable, s: AblationSettings, log=print):
    """Pre-train the caption-conditioned denoiser (the toy SDXL) with flow matching."""
    denoiser = Denoiser(DENOISER)
    conditioner = CaptionConditioner(pipe.model.config.llm.hidden_size, DENOISER.context_dim)
    params = [p for p in base_holder(denoiser, conditioner).parameters() if p.requires_grad]
    rng, gen = random.Random(s.seed + 1), torch.Generator().manual_seed(s.seed + 1)

    def loss_fn():
        rows = [rng.choice(tables.train) for _ in range(s.batch)]
        texts = [caption(tables.scenes[i], rng) if rng.random() >= s.cond_dropout else "" for i in rows]
        states, valid = captions(texts)
        context = conditioner(states)
        loss = flow_matching_loss(lambda x_t, t: denoiser(x_t, t, context, valid), tables.tokens[rows], gen)
        return loss, {"mse": f"{loss.item():.4f}"}

    _optimize(params, s.base_steps, s.base_lr, s.warmup, loss_fn, desc="base (caption -> image)", log=log)
    return denoiser.eval(), conditioner.eval()


def adapt_detokenizer(base: Denoiser, tables: Tables, stats, n: int, mode: str, *, s: AblationSettings, log=print):
    """Make the base read N pooled ViT embeddings: SEED-X trains only the resampler and to_k / to_v ("kv")."""
    dt = DeTokenizer(DENOISER, tables.grid.shape[-1], **RESAMPLER)
    dt.denoiser.load_state_dict(base.state_dict())
    params = dt.trainable(mode)
    embeddings = standardize(pool(tables.grid, n), stats, n)  # (S, n, D)
    negative = standardize(pool(tables.gray, n), stats, n)  # (1, n, D)
    rng, gen = random.Random(s.seed + 2), torch.Generator().manual_seed(s.seed + 2)

    def loss_fn():
        rows = [rng.choice(tables.train) for _ in range(s.batch)]
        e = embeddings[rows].clone()
        e[torch.rand(len(rows), generator=gen) < s.cond_dropout] = negative[0]
        loss = flow_matching_loss(lambda x_t, t: dt(x_t, t, e), tables.tokens[rows], gen)
        return loss, {"mse": f"{loss.item():.4f}"}

    dt.train()
    _optimize(params, s.detok_steps, s.detok_lr, s.warmup, loss_fn, desc=f"de-tokenizer N={n} ({mode})", log=log)
    return dt.eval()


def train_regressor(pipe, tables: Tables, stats, n: int, head: str, *, s: AblationSettings, log=print):
    """The LLM with N query tokens regressing the standardized pooled embeddings of the captioned scene."""
    reg = QueryRegressor(pipe.model, pipe.tokenizer, pipe.special, n, out_dim=tables.grid.shape[-1],
                         head_depth=HEADS[head], lora_rank=s.lora_rank)
    params = [p for p in reg.parameters() if p.requires_grad]
    targets = standardize(pool(tables.grid, n), stats, n)  # (S, n, D)
    rng = random.Random(s.seed + 3)

    def loss_fn():
        rows = [rng.choice(tables.train) for _ in range(s.llm_batch)]
        pred, ce = reg([caption(tables.scenes[i], rng) for i in rows])
        mse = ((pred - targets[rows]) ** 2).mean()
        return s.lm_loss_scale * ce + s.rec_loss_scale * mse, {"mse": f"{mse.item():.3f}", "ce": f"{ce.item():.3f}"}

    reg.train()
    _optimize(params, s.llm_steps, s.llm_lr, s.warmup, loss_fn, desc=f"regressor N={n} ({head} head)", log=log)
    return reg.eval()


# --- the command ------------------------------------------------------------------------------------------

def config_json(s: AblationSettings) -> dict:
    return {"denoiser": asdict(DENOISER), "resampler": RESAMPLER, "sampler": asdict(SAMPLER), "n_choices": N_CHOICES,
            "compare_n": s.compare_n, "lora_rank": s.lora_rank, "caption_layers": s.caption_layers,
            "split_seed": s.seed, "test_scenes": s.test_scenes, "settings": asdict(s)}


def ablate(out: Path, s: AblationSettings | None = None, log=print) -> dict:
    """Train everything into ``out``, then measure; writes ``metrics.json`` and returns the metrics. Runs on
    ``s.threads`` CPU threads from the seed ``s.seed``; the process's thread count and global RNG are left
    as they were."""
    s = s or AblationSettings()
    with cpu_threads(s.threads), torch.random.fork_rng():
        torch.manual_seed(s.seed)
        return _ablate(Path(out), s, log)


def _ablate(out: Path, s: AblationSettings, log) -> dict:
    from .. import micro

    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    pipe = micro.load(BASE)  # SEED-X sits on micro-BAGEL v1's frozen towers
    tables = world_tables(pipe, s, log)
    stats = visual_stats(tables)
    save_tensors(out / "visual_stats.safetensors", stats)
    (out / "config.json").write_text(json.dumps(config_json(s), indent=2))
    seconds = {}

    start = time.time()
    denoiser, conditioner = train_base(pipe, tables, CaptionTable(pipe, tables.scenes, s.caption_layers), s, log)
    save_tensors(out / "base.safetensors", base_holder(denoiser, conditioner).state_dict())
    seconds["base"] = time.time() - start

    start = time.time()
    for n, mode in [(n, "kv") for n in N_CHOICES] + [(s.compare_n, "full")]:
        dt = adapt_detokenizer(denoiser, tables, stats, n, mode, s=s, log=log)
        save_tensors(out / detokenizer_file(n, mode),
                     {k: v for k, v in dt.state_dict().items() if dt.trains(k, mode)})
    seconds["detokenizers"] = time.time() - start

    start = time.time()
    for n, head in [(n, "cross") for n in N_CHOICES] + [(s.compare_n, "deep")]:
        reg = train_regressor(pipe, tables, stats, n, head, s=s, log=log)
        save_tensors(out / regressor_file(n, head), reg.trainable_state_dict())
    seconds["regressors"] = time.time() - start
    train_seconds = time.time() - t0
    log(f"trained in {train_seconds:.0f} s; measuring")

    start = time.time()
    metrics = measure(SeedX(pipe, out), s.eval_prompts, log=log)
    seconds["measure"] = time.time() - start
    metrics["seconds"] = {k: round(v, 1) for k, v in {**seconds, "train": train_seconds,
                                                       "total": time.time() - t0}.items()}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


# --- measurements -----------------------------------------------------------------------------------------

def _rounded(d: dict) -> dict:
    return {k: round(v, 4) for k, v in d.items()}


@torch.no_grad()
def measure(seedx: SeedX, eval_prompts: int = 40, micro_bagel: bool = True, log=print) -> dict:
    """Every number of the ablation, from the weights in ``seedx.folder``: reconstruction and regression on the
    held-out scenes, text-to-image on micro-BAGEL's held-out prompts (and micro-BAGEL itself on them)."""
    test = held_out_scenes(seedx)
    floor = CaptionFloor(seedx)
    prompts = held_out_prompts(eval_prompts)
    compare = seedx.settings["compare_n"]
    metrics = {"reconstruction": {}, "regression": {}, "t2i": {}, "t2i_from_floor": {}}
    for n in tqdm(N_CHOICES, desc="measuring N", leave=False):
        metrics["reconstruction"][str(n)] = _rounded(reconstruction_scores(seedx, test, n))
        metrics["regression"][str(n)] = _rounded(regression_scores(seedx, test, n, floor=floor))
        metrics["t2i"][str(n)] = _rounded(t2i_scores(seedx, prompts, n))
        # the de-tokenizer fed the best caption-only guess instead of the LLM's: separates the two stages
        metrics["t2i_from_floor"][str(n)] = _rounded(attribute_accuracy(seedx.draw(floor(prompts, n), n), prompts))
    metrics["fine_tuning"] = {"kv": metrics["reconstruction"][str(compare)],
                              "full": _rounded(reconstruction_scores(seedx, test, compare, "full"))}
    metrics["heads"] = {"cross": {**metrics["regression"][str(compare)], **metrics["t2i"][str(compare)]},
                        "deep": _rounded({**regression_scores(seedx, test, compare, "deep", floor),
                                          **t2i_scores(seedx, prompts, compare, "deep")})}
    texts = [caption(sc) for sc in prompts]
    metrics["t2i"]["base_from_captions"] = _rounded(attribute_accuracy(seedx.draw_from_captions(texts), prompts))
    if micro_bagel:
        images = [seedx.pipe.generate(text, seed=10_000 + i, num_timesteps=50, progress=False).image
                  for i, text in enumerate(texts)]
        metrics["t2i"]["micro_bagel"] = _rounded(attribute_accuracy(images, prompts))
    log(report(metrics, compare))
    return metrics


def report(m: dict, compare: int) -> str:
    """The measured curves as plain-text tables."""
    lines = ["", "SEED-X at toy scale: what N embeddings buy", "",
             f"{'N':>4} | {'recon MAE':>9} {'recon all':>9} {'recon pos':>9} | {'regr. err':>9} {'floor':>6} | "
             f"{'t2i all':>7} {'t2i col':>7} {'t2i pos':>7} | {'floor t2i all':>13}"]
    for n in N_CHOICES:
        r, g, t = m["reconstruction"][str(n)], m["regression"][str(n)], m["t2i"][str(n)]
        lines.append(f"{n:>4} | {r['mae']:>9.2f} {r['all']:>9.2f} {r['position']:>9.2f} | {g['rel_mse']:>9.3f} "
                     f"{g['floor']:>6.3f} | {t['all']:>7.2f} {t['color']:>7.2f} {t['position']:>7.2f} | "
                     f"{m['t2i_from_floor'][str(n)]['all']:>13.2f}")
    h, f = m["heads"], m["fine_tuning"]
    lines += ["", f"output head at N={compare}: regression error / t2i all",
              f"  one-layer cross-attention  {h['cross']['rel_mse']:.3f} / {h['cross']['all']:.2f}",
              f"  4-layer resampler          {h['deep']['rel_mse']:.3f} / {h['deep']['all']:.2f}",
              "", f"de-tokenizer at N={compare}: reconstruction MAE / all attributes right",
              f"  keys and values only (SEED-X)  {f['kv']['mae']:.2f} / {f['kv']['all']:.2f}",
              f"  full fine-tuning               {f['full']['mae']:.2f} / {f['full']['all']:.2f}", ""]
    for name in ("base_from_captions", "micro_bagel"):
        if name in m["t2i"]:
            t = m["t2i"][name]
            lines.append(f"t2i {name:<20} all {t['all']:.2f}  " + "  ".join(
                f"{a} {t[a]:.2f}" for a in ("color", "position", "shape", "size")))
    return "\n".join(lines)
