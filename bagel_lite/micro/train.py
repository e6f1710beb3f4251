"""Training micro-BAGEL from scratch on the CPU: first the autoencoder, then BAGEL itself.

1. ``train_autoencoder`` — a FLUX-family autoencoder (the same ``AutoEncoder`` code as the full model, width
   32) learns to reconstruct the world's images. Its scale and shift are then measured on the data, as
   FLUX's 0.3611 / 0.1159 were, so that the latents the LLM sees have zero mean and unit variance.
2. The posterior (mean, log-variance) of every possible scene is computed once; a training sample draws a
   fresh latent from it, as BAGEL encodes with a *sampled* posterior.
3. ``train_bagel`` — BAGEL's recipe at small scale: after a short alignment phase on questions about images
   (BAGEL's stage 1 trains the image-to-LLM path first), samples of the three tasks packed into one sequence
   with causal / full / noise splits, cross-entropy on answers, MSE on flow-matching velocities with
   logit-normal timesteps, condition dropout for CFG; both experts and the ViT train together; AdamW with
   warm-up, and an EMA of the weights which is what gets saved (``ema.safetensors``).
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..autoencoder import AutoEncoder
from ..bagel import Bagel
from ..checkpoint import save_bagel
from ..training import PackedSequence, packed_loss
from .data import TASKS, SampleMaker, build_tokenizer, image_batch, micro_config
from .world import EMPTY, Scene, all_scenes, random_scene


@dataclass
class TrainSettings:
    seed: int = 0
    ae_steps: int = 600
    ae_batch: int = 8
    ae_lr: float = 3e-3
    align_steps: int = 500  # first, understanding only (BAGEL's stage 1 aligns the image path to the LLM)
    steps: int = 3000  # then all three tasks
    samples_per_step: int = 24
    task_weights: tuple[float, float, float] = (0.2, 0.35, 0.45)  # t2i, vqa, edit
    lr: float = 1.5e-3
    warmup: int = 100
    ema: float = 0.995
    timestep_shift: float = 1.0
    threads: int | None = None


def _autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


# --- 1. the autoencoder -----------------------------------------------------------------------------------

def train_autoencoder(ae: AutoEncoder, s: TrainSettings, log=print) -> dict:
    """Reconstruction (L1 + L2, object pixels weighted 5x so the small shapes are not drowned by the white
    background) plus a light KL term. The log-variance head starts at -8 (posterior std ~0.02): with a
    std near 1 the sampled latents would bury what the encoder knows."""
    rng = random.Random(s.seed)
    z = ae.config.z_channels
    with torch.no_grad():
        ae.encoder.conv_out.bias[z:] = -8.0
    opt = torch.optim.AdamW(ae.parameters(), lr=s.ae_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(s.seed)
    ae.train()
    bar = tqdm(range(s.ae_steps), desc="autoencoder", leave=False)
    for step in bar:
        scenes = [random_scene(rng) if rng.random() > 0.05 else EMPTY for _ in range(s.ae_batch)]
        x = image_batch(scenes)  # (B, 3, 64, 64)
        lr = s.ae_lr * min(1.0, (step + 1) / 50) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / s.ae_steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        with _autocast():
            mean, logvar = ae.encoder(x).float().chunk(2, dim=1)
            z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=gen)
            y = ae.decoder(z).float()
        weight = 1 + 4 * ((x < 0.99).any(dim=1, keepdim=True)).float()  # (B, 1, H, W): object pixels 5x
        rec = (weight * ((y - x).abs() + (y - x) ** 2)).mean()
        kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).mean()
        loss = rec + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0:
            bar.set_postfix(rec=f"{rec.item():.4f}")
    ae.eval()
    return {"ae_rec_loss": rec.item()}


ALL_SCENES = all_scenes()


@torch.no_grad()
def posterior_table(ae: AutoEncoder, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the raw posterior of every scene in ALL_SCENES: (S, 16, 8, 8) each."""
    means, stds = [], []
    for i in tqdm(range(0, len(ALL_SCENES), batch), desc="encoding the world", leave=False):
        with _autocast():
            mean, logvar = ae.encoder(image_batch(ALL_SCENES[i:i + batch])).float().chunk(2, dim=1)
        means.append(mean)
        stds.append(torch.exp(0.5 * logvar))
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def set_scale_and_shift(ae: AutoEncoder, mean: torch.Tensor) -> AutoEncoder:
    """Choose shift = mean and scale = 1 / std of the latents, so the LLM sees unit-variance latents."""
    shift = float(mean.mean())
    scale = float(1.0 / (mean - shift).std())
    ae.config = replace(ae.config, scale_factor=round(scale, 4), shift_factor=round(shift, 4))
    return ae


@torch.no_grad()
def reconstruction_error(ae: AutoEncoder, n: int = 64, seed: int = 123) -> float:
    """Mean absolute pixel error (0..255 scale) of encode -> decode on fresh scenes."""
    rng = random.Random(seed)
    x = image_batch([random_scene(rng) for _ in range(n)])
    y = ae.decode(ae.encode(x, sample=False)).clamp(-1, 1)
    return float(((y - x).abs() * 127.5).mean())


# --- 2. BAGEL ---------------------------------------------------------------------------------------------

def train_bagel(model: Bagel, tokenizer, special, table, ae_cfg, s: TrainSettings, log=print,
                on_eval=None, eval_every: int = 0) -> Bagel:
    """Train with the packed recipe; returns the EMA model."""
    index = {sc: i for i, sc in enumerate(ALL_SCENES)}
    means, stds = table
    gen = torch.Generator().manual_seed(s.seed + 1)

    def latent_of(scene: Scene) -> torch.Tensor:
        i = index[scene]
        z = means[i] + stds[i] * torch.randn(means[i].shape, generator=gen)  # a fresh posterior sample
        return ae_cfg.scale_factor * (z - ae_cfg.shift_factor)

    maker = SampleMaker(tokenizer, latent_of)
    rng = random.Random(s.seed + 2)
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    model.train()
    total = s.align_steps + s.steps
    bar = tqdm(range(total), desc="micro-BAGEL", leave=False)
    start = time.time()
    for step in bar:
        seq = PackedSequence(special)
        # Alignment first: reading *where* a shape is from the ViT tokens sits on a long plateau before it is
        # learned; questions alone get over it quickly. Then the three tasks together.
        weights = (0.0, 1.0, 0.0) if step < s.align_steps else s.task_weights
        for task in rng.choices(TASKS, weights=weights, k=s.samples_per_step):
            seq.add_sample(maker.sample(task, rng), model, rng)
        lr = s.lr * min(1.0, (step + 1) / s.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / total)))
        for group in opt.param_groups:
            group["lr"] = lr
        losses = packed_loss(model, seq, s.timestep_shift, gen)  # float32: at this width bf16 is slower on a CPU
        loss = losses["ce"] + losses["mse"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(s.ema, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        if step % 10 == 0:
            bar.set_postfix(ce=f"{losses['ce'].item():.3f}", mse=f"{losses['mse'].item():.3f}")
        if step % 250 == 0 or step == total - 1:
            log(f"step {step:5d}  ce {losses['ce'].item():.4f}  mse {losses['mse'].item():.4f}  "
                f"lr {lr:.2e}  {time.time() - start:6.0f} s")
        if on_eval and eval_every and step and step % eval_every == 0:
            on_eval(ema, step)
    model.eval()
    return ema


# --- the command ------------------------------------------------------------------------------------------

def train(out: Path, s: TrainSettings, log=print, eval_every: int = 0) -> dict:
    """Train the autoencoder and micro-BAGEL from scratch; write an official-layout folder to ``out``.

    With ``eval_every`` > 0 a quick evaluation of the EMA model is printed every that many steps (its time is
    included in the reported training time).
    """
    if s.threads:
        torch.set_num_threads(s.threads)
    torch.manual_seed(s.seed)
    t0 = time.time()
    tokenizer, special = build_tokenizer()
    cfg = micro_config(vocab_size=((len(tokenizer) + 7) // 8) * 8)
    model, ae = Bagel(cfg), AutoEncoder(cfg.vae)
    torch.nn.init.zeros_(model.llm2vae.weight)  # as BAGEL: the velocity head starts at zero
    torch.nn.init.zeros_(model.llm2vae.bias)

    log(f"micro-BAGEL: {sum(p.numel() for p in model.parameters()):,} parameters, autoencoder "
        f"{sum(p.numel() for p in ae.parameters()):,}")
    ae_stats = train_autoencoder(ae, s, log)
    table = posterior_table(ae)
    set_scale_and_shift(ae, table[0])
    rec = reconstruction_error(ae)
    log(f"autoencoder: {time.time() - t0:.0f} s, reconstruction error {rec:.2f}/255, scale {ae.config.scale_factor},"
        f" shift {ae.config.shift_factor}")
    for p in ae.parameters():
        p.requires_grad_(False)

    def quick_eval(ema_model, step):
        from ..pipeline import Pipeline
        from .data import micro_transform
        from .evaluate import evaluate_model

        pipe = Pipeline(ema_model, ae, tokenizer, special, micro_transform(), micro_transform())
        m = evaluate_model(pipe, n_t2i=12, n_vqa=40, n_edit=12, num_timesteps=20, progress=False)
        log(f"  eval at step {step}: " + "  ".join(f"{k} {m[k]:.2f}" for k in
                                                  ("t2i_color_acc", "t2i_position_acc", "vqa_acc", "edit_success")))

    t1 = time.time()
    ema = train_bagel(model, tokenizer, special, table, ae.config, s, log, on_eval=quick_eval if eval_every else None,
                      eval_every=eval_every)
    log(f"micro-BAGEL: {time.time() - t1:.0f} s")
    save_bagel(out, ema, ae, tokenizer)
    stats = {"seed": s.seed, "train_seconds": round(time.time() - t0, 1), "ae_reconstruction_error": round(rec, 3),
             **ae_stats, "settings": s.__dict__}
    (out / "train_log.json").write_text(json.dumps(stats, indent=2, default=str))
    return stats


__all__ = ["TrainSettings", "train", "train_autoencoder", "train_bagel"]
