"""Training micro-BAGEL from scratch on the CPU: first the autoencoder, then BAGEL itself.

1. ``train_autoencoder`` — a FLUX-family autoencoder (the same ``AutoEncoder`` code as the full model, width
   32) learns to reconstruct the world's images. Its scale and shift are then measured on the data, as
   FLUX's 0.3611 / 0.1159 were, so that the latents the LLM sees have zero mean and unit variance.
2. The posterior (mean, log-variance) of a scene is computed once, the first time a sample needs it
   (``PosteriorTable``); a training sample draws a fresh latent from it, as BAGEL encodes with a *sampled*
   posterior.
3. ``train_bagel`` — BAGEL's recipe at small scale: after a short alignment phase on questions about images
   (BAGEL's stage 1 trains the image-to-LLM path first), samples of the three tasks packed into one sequence
   with causal / full / noise splits, cross-entropy on answers, MSE on flow-matching velocities with
   logit-normal timesteps, condition dropout for CFG; both experts and the ViT train together; AdamW with
   warm-up, and an EMA of the weights which is what gets saved (``ema.safetensors``).
4. Stage 3 (``FinalStage``, long recipe only): a short mixed run from the stored weights in which every
   question's picture moves by up to 2 pixels (never onto a held-out picture), so that the ViT reads shapes, not
   each training scene's pixels.

Two recipes share this code: ``LONG`` made the shipped checkpoint (about 78 minutes on 2 cores; it saves a
resumable state every few minutes, so a stopped run continues where it stopped, with the same bytes at the end),
``QUICK`` is what a learner runs (under 10 minutes). Neither ever sees a held-out scene (``world.is_held_out``).

The autoencoder runs under bf16 autocast only where the CPU computes bf16 natively (``precision.cpu_path``);
elsewhere in float32, which computes other bits: the shipped checkpoint was made on the bf16 path, and the long
recipe reproduces it byte for byte only there. Every run's log says which path it took (``cpu_path``).
"""

from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from ..loading.checkpoint import load_autoencoder, read_config, save_bagel
from ..model.autoencoder import AutoEncoder
from ..model.bagel import Bagel
from ..training.optimization import cosine_lr, cpu_threads, optimizer_step, set_lr
from ..training.packing import PackedSequence
from ..training.precision import CpuPath, cpu_path
from ..training.trainer import StepSettings, Trainer, find_state, make_accelerator, save_state
from . import CHECKPOINT
from .data import QUESTION_WEIGHTS, SMALL, TASKS, MicroSize, SampleMaker, build_tokenizer, image_batch, micro_config
from .evaluate import autoencoder_quality
from .world import EMPTY, Scene, all_scenes, held_out_scene, training_scene


@dataclass
class FinalStage:
    """Stage 3, after the mixed run: a short run of all three tasks that starts from the weights stage 2 would
    ship (its EMA, stored as ``weights_dtype``) with a fresh optimiser, questions drawn more often, and every
    question's picture moved by up to ``question_shift`` pixels (never onto a held-out picture). Without it the
    ViT learns each training scene's exact pixels and misreads small shapes moved by 2 pixels."""

    steps: int = 2500
    lr: float = 3e-4
    warmup: int = 50
    ema: float = 0.995
    task_weights: tuple[float, float, float] = (0.15, 0.45, 0.4)  # t2i, vqa, edit
    question_shift: int = 2  # never onto a held-out picture (data.question_move)
    seed_offset: int = 100  # its data and noise come from seed + seed_offset
    trainable: tuple[str, ...] | None = None  # names (prefixes) of the parameters it trains; None: all


def freeze_for_final(model: Bagel, f: FinalStage) -> None:
    """Stage 3 trains only the parameters whose names start with ``f.trainable`` (all, if None)."""
    for name, p in model.named_parameters():
        if f.trainable is not None and not name.startswith(tuple(f.trainable)):
            p.requires_grad_(False)


@dataclass
class TrainSettings:
    seed: int = 0
    size: MicroSize = field(default_factory=MicroSize)
    ae_steps: int = 3000  # 1,800 gave 31.4 dB on this machine's CPU, too few to read every attribute back
    ae_batch: int = 12
    ae_lr: float = 3e-3
    align_steps: int = 1500  # first, understanding only (BAGEL's stage 1 aligns the image path to the LLM)
    steps: int = 9500  # then all three tasks
    samples_per_step: int = 24
    micro_batches: int = 1  # packed sequences a step's samples are split into, over processes and accumulation
    task_weights: tuple[float, float, float] = (0.25, 0.3, 0.45)  # t2i, vqa, edit
    question_weights: dict = field(default_factory=lambda: dict(QUESTION_WEIGHTS))
    edit_weights: dict = field(default_factory=lambda: {"recolor": 1.5, "move": 1.0, "resize": 1.5, "remove": 0.5,
                                                        "add": 1.0})
    question_shift: int = 0  # pixels a question's picture moves at random (SampleMaker)
    lr: float = 1e-3
    warmup: int = 200
    ema: float = 0.998
    timestep_shift: float = 1.0
    threads: int = 1  # fixed, so that a resumed run computes the same bytes (1: steady on a busy machine)
    eval_every: int = 1500  # a small held-out evaluation into the training log (0: never)
    watch_every: int = 0  # draw and ask a few fixed held-out scenes into the log every this many steps (0: never)
    state_every_s: float = 300.0  # save a resumable state at least this often
    weights_dtype: str = "float16"  # storage of ema.safetensors (upcast at load)
    # True: take the shipped checkpoint's autoencoder, frozen, instead of training one first -- as BAGEL takes
    # FLUX's finished VAE. The quick recipe does, so its ten minutes all go to BAGEL itself.
    shipped_autoencoder: bool = False
    final: FinalStage | None = field(default_factory=FinalStage)  # stage 3 (None: stop after stage 2)
    # The autoencoder encodes a scene the first time a sample needs it, with the rest of its block of this many
    # scenes (fixed blocks of ALL_SCENES, so the bits never depend on which sample came first).
    encode_block: int = 256
    scale_scenes: int = 0  # scenes whose latents measure scale and shift (0: all 1,621; tests take a few)
    ae_eval_scenes: int = 200  # held-out scenes that measure the autoencoder's quality (PSNR, attributes)
    mot: bool = True  # False: a dense model (one expert for every token), the baseline of workbook 05


QUICK = TrainSettings(size=SMALL, shipped_autoencoder=True, ae_steps=0, align_steps=1000, steps=2000, lr=1.5e-3,
                      warmup=100, ema=0.995, task_weights=(0.2, 0.35, 0.45), eval_every=0, weights_dtype="float32",
                      final=None)
LONG = TrainSettings()
RECIPES = {"quick": QUICK, "long": LONG}


class Resumable:
    """The training state on disk, through accelerate: ``save_state`` writes what is registered with the phase's
    ``Accelerator`` (the prepared model and optimiser, the trainer's step and EMA, or the autoencoder and its
    optimiser), its RNG states, and ``progress.pt`` (the phase, the step, the data RNGs, the log) into a folder,
    atomically (``training.trainer.save_state``), at most every ``every_s`` seconds. ``load`` reads the progress
    of the last complete state; ``restore`` fills the objects the resumed phase registered."""

    def __init__(self, path: Path | None, every_s: float, settings: dict | None = None, write: bool = True):
        self.path, self.every_s, self.last, self.settings = path, every_s, time.time(), settings
        self.write = write  # under torchrun only the main process writes; every process reads
        self.accelerator = None  # the running phase's (``attach``)

    def load(self) -> dict | None:
        found = None if self.path is None else find_state(self.path)
        if found is None:
            return None
        return torch.load(found / PROGRESS, weights_only=False)  # our own file: RNG states, the log

    def attach(self, accelerator) -> None:
        """The phase now running saves (and restores) what is registered with ``accelerator``."""
        self.accelerator = accelerator

    def restore(self) -> None:
        self.accelerator.load_state(str(find_state(self.path)))

    def maybe_save(self, make_state, force: bool = False) -> None:
        if self.path is None or not self.write or not (force or time.time() - self.last >= self.every_s):
            return
        progress = {**make_state(), "settings": self.settings}
        save_state(self.accelerator, self.path, {"phase": progress["phase"], "step": progress["step"]},
                   files={PROGRESS: progress})
        self.last = time.time()


PROGRESS = "progress.pt"


# --- 1. the autoencoder -----------------------------------------------------------------------------------

def train_autoencoder(ae: AutoEncoder, s: TrainSettings, *, state: dict | None = None,
                      saver: Resumable | None = None, clock=None, path: CpuPath | None = None) -> dict:
    """Reconstruction (L1 + L2, object pixels weighted 5x so the small shapes are not drowned by the white
    background) plus a light KL term, on training scenes only. The log-variance head starts at -8 (posterior
    std ~0.02): with a std near 1 the sampled latents would bury what the encoder knows. ``path``: bf16
    autocast or float32 (default: ``precision.cpu_path()``, bf16 only where the CPU has it natively)."""
    path = path or cpu_path()
    rng, gen = random.Random(s.seed), torch.Generator().manual_seed(s.seed)
    z = ae.config.z_channels
    with torch.no_grad():
        ae.encoder.conv_out.bias[z:] = -8.0
    opt = torch.optim.AdamW(ae.parameters(), lr=s.ae_lr, weight_decay=0.0)
    acc = make_accelerator(cpu=True)
    acc.register_for_checkpointing(ae, opt)  # saved and restored by accelerate (the loop stays hand-written)
    if saver is not None:
        saver.attach(acc)
    first, curve = 0, []
    if state is not None:  # resume
        saver.restore()
        rng.setstate(state["rng"])
        gen.set_state(state["gen"])
        first, curve = state["step"], state["curve"]
    ae.train()
    bar = tqdm(range(first, s.ae_steps), desc=f"autoencoder ({path.name})", initial=first, total=s.ae_steps,
               leave=False)
    for step in bar:
        scenes = [training_scene(rng) if rng.random() > 0.05 else EMPTY for _ in range(s.ae_batch)]
        x = image_batch(scenes)  # (B, 3, 64, 64)
        set_lr(opt, cosine_lr(step, s.ae_steps, s.ae_lr, 50, 0.05))
        with path.autocast():
            mean, logvar = ae.encoder(x).float().chunk(2, dim=1)
            z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=gen)
            y = ae.decoder(z).float()
        weight = 1 + 4 * ((x < 0.99).any(dim=1, keepdim=True)).float()  # (B, 1, H, W): object pixels 5x
        rec = (weight * ((y - x).abs() + (y - x) ** 2)).mean()
        kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).mean()
        optimizer_step(opt, rec + 1e-4 * kl)
        if step % 10 == 0:
            curve.append([step, round(rec.item(), 5)])
            bar.set_postfix(rec=f"{rec.item():.4f}")
        if saver is not None:
            saver.maybe_save(lambda step=step: {"phase": "ae", "step": step + 1, "rng": rng.getstate(),
                                                "gen": gen.get_state(), "curve": curve, "elapsed": clock()})
    ae.eval()
    return {"ae_rec_loss": curve[-1][1] if curve else None, "ae_curve": curve}


ALL_SCENES = all_scenes()


class PosteriorTable:
    """(mean, std) of the raw posterior of each scene of ALL_SCENES, computed the first time it is asked for.

    A scene is encoded together with the rest of its block (``ALL_SCENES[k * block:(k + 1) * block]``), so the
    numbers never depend on the order in which samples ask: a resumed run reads the same bits, and with blocks of
    256 the table equals the one the shipped recipe computed in one go. A short run encodes only the blocks its
    samples touch (with ``block=1``, only its scenes)."""

    def __init__(self, ae: AutoEncoder, block: int = 256, path: CpuPath | None = None):
        if block < 1:
            raise ValueError(f"encode_block must be at least 1, got {block}")
        self.ae, self.block, self.path = ae, block, path or cpu_path()
        self.index = {scene: i for i, scene in enumerate(ALL_SCENES)}
        self.blocks: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # block number -> (mean, std)

    @property
    def encoded(self) -> int:
        """How many scenes have been encoded so far."""
        return sum(len(mean) for mean, _ in self.blocks.values())

    @torch.no_grad()
    def _block(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if k not in self.blocks:
            scenes = ALL_SCENES[k * self.block:(k + 1) * self.block]
            with self.path.autocast():
                mean, logvar = self.ae.encoder(image_batch(scenes)).float().chunk(2, dim=1)  # (B, z, 8, 8) each
            self.blocks[k] = (mean, torch.exp(0.5 * logvar))
        return self.blocks[k]

    def __call__(self, scene: Scene) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of ``scene``'s posterior: (z, 8, 8) each."""
        k, j = divmod(self.index[scene], self.block)
        mean, std = self._block(k)
        return mean[j], std[j]

    def means(self, scenes: list[Scene]) -> torch.Tensor:
        """The posterior means of ``scenes``: (len(scenes), z, 8, 8)."""
        return torch.stack([self(scene)[0] for scene in scenes])


def scale_scenes(n: int) -> list[Scene]:
    """The scenes whose latents measure scale and shift: all of them (n = 0), else n spread evenly."""
    if n <= 0 or n >= len(ALL_SCENES):
        return ALL_SCENES
    return [ALL_SCENES[round(i * (len(ALL_SCENES) - 1) / (n - 1))] for i in range(n)] if n > 1 else ALL_SCENES[:1]


@torch.no_grad()
def set_scale_and_shift(ae: AutoEncoder, mean: torch.Tensor) -> AutoEncoder:
    """Choose shift = mean and scale = 1 / std of the latents, so the LLM sees unit-variance latents."""
    shift = float(mean.mean())
    scale = float(1.0 / (mean - shift).std())
    ae.config = replace(ae.config, scale_factor=round(scale, 4), shift_factor=round(shift, 4))
    return ae


@torch.no_grad()
def reconstruction_error(ae: AutoEncoder, n: int = 64, seed: int = 123) -> float:
    """Mean absolute pixel error (0..255 scale) of encode -> decode on held-out scenes."""
    rng = random.Random(seed)
    x = image_batch([held_out_scene(rng) for _ in range(n)])
    y = ae.decode(ae.encode(x, sample=False)).clamp(-1, 1)
    return float(((y - x).abs() * 127.5).mean())


# --- 2. BAGEL ---------------------------------------------------------------------------------------------

def _step_batches(maker: SampleMaker, special, cfg, s: TrainSettings, step: int, *, rng: random.Random,
                  gen: torch.Generator) -> list:
    """The packed micro-batches of one step's global batch: ``s.samples_per_step`` samples dealt round-robin into
    ``s.micro_batches`` sequences. Alignment first: reading *where* a shape is from the ViT tokens sits on a long
    plateau before it is learned; questions alone get over it quickly. Then the three tasks together."""
    seqs = [PackedSequence(special) for _ in range(s.micro_batches)]
    weights = (0.0, 1.0, 0.0) if step < s.align_steps else s.task_weights
    for i, task in enumerate(rng.choices(TASKS, weights=weights, k=s.samples_per_step)):
        seqs[i % s.micro_batches].add_sample(maker.sample(task, rng), cfg, rng)
    return [seq.batch(s.timestep_shift, gen) for seq in seqs]  # every process draws all the noise


def train_bagel(model: Bagel, tokenizer, special, table: PosteriorTable, ae_cfg, *, s: TrainSettings, log=print,
                on_eval=None, on_watch=None, state: dict | None = None, saver: Resumable | None = None,
                clock=None, phase: str = "bagel") -> tuple:
    """Train with the packed recipe; returns (the EMA model, the training log). ``phase`` names the states
    this run saves (stage 2: "bagel", stage 3: "final").

    The step runs under accelerate (``training.trainer.Trainer``): one process, or several under ``torchrun``.
    Every process draws the same ``s.samples_per_step`` samples, split round-robin into ``s.micro_batches``
    packed sequences; process r trains on its share of them (the rest it accumulates), so the global batch and
    its noise are the same whatever the number of processes."""
    acc = make_accelerator(cpu=True, accumulate=s.micro_batches // PartialState().num_processes)
    if s.micro_batches % acc.num_processes:
        raise ValueError(f"micro_batches={s.micro_batches} must be a multiple of the {acc.num_processes} processes")
    gen, rng = torch.Generator().manual_seed(s.seed + 1), random.Random(s.seed + 2)

    def latent_of(scene: Scene) -> torch.Tensor:
        mean, std = table(scene)
        z = mean + std * torch.randn(mean.shape, generator=gen)  # a fresh posterior sample
        return ae_cfg.scale_factor * (z - ae_cfg.shift_factor)

    maker = SampleMaker(tokenizer, latent_of, question_weights=s.question_weights, edit_weights=s.edit_weights,
                        question_shift=s.question_shift)
    total = s.align_steps + s.steps
    trainer = Trainer(model, acc, StepSettings(lr=s.lr, warmup=s.warmup, floor=0.1, steps=total, betas=(0.9, 0.95),
                                               eps=1e-8, clip=1.0, ema=s.ema, ce_weight=1.0, mse_weight=1.0))
    acc.register_for_checkpointing(trainer)  # with the prepared model and optimiser: what save_state writes
    if saver is not None:
        saver.attach(acc)
    first, history = 0, {"ce": [], "mse": [], "evals": []}
    if state is not None:  # resume exactly where the state was saved
        saver.restore()  # model, optimiser, step and EMA
        rng.setstate(state["rng"])
        gen.set_state(state["gen"])
        first, history = state["step"], state["history"]
    mine = slice(acc.process_index * acc.gradient_accumulation_steps,
                 (acc.process_index + 1) * acc.gradient_accumulation_steps)  # this process's micro-batches
    model.train()
    bar = tqdm(range(first, total), desc="micro-BAGEL", initial=first, total=total, leave=False,
               disable=not acc.is_main_process)
    for step in bar:
        batches = _step_batches(maker, special, model.config, s, step, rng=rng, gen=gen)
        losses = trainer.train_step(batches[mine], lr=cosine_lr(step, total, s.lr, s.warmup, 0.1))
        history["ce"].append(round(losses["ce"], 4))
        history["mse"].append(round(losses["mse"], 4))
        if step % 10 == 0:
            bar.set_postfix(ce=f"{history['ce'][-1]:.3f}", mse=f"{history['mse'][-1]:.3f}")
        if on_eval and s.eval_every and (step + 1) % s.eval_every == 0 and acc.is_main_process:
            history["evals"].append({"step": step + 1, **on_eval(trainer.ema_model())})
            log(f"step {step + 1}: " + "  ".join(f"{k} {v:.2f}" for k, v in history["evals"][-1].items()
                                                  if k != "step"))
        if on_watch and s.watch_every and (step + 1) % s.watch_every == 0 and acc.is_main_process:
            history.setdefault("watch", []).append({"step": step + 1, **on_watch(trainer.ema_model())})
        if saver is not None and acc.is_main_process:
            saver.maybe_save(lambda step=step: {"phase": phase, "step": step + 1,
                                                "rng": rng.getstate(), "gen": gen.get_state(),
                                                "history": history, "elapsed": clock()},
                             force=step + 1 == total)
    model.eval()
    return trainer.ema_model(), history


# --- the command ------------------------------------------------------------------------------------------

def _quick_eval(ae, tokenizer, special):
    def run(ema_model) -> dict:
        from ..inference.pipeline import Pipeline
        from .data import micro_transform
        from .evaluate import evaluate_model

        pipe = Pipeline(ema_model, ae, tokenizer, special, vae_transform=micro_transform(),
                        vit_transform=micro_transform())
        m = evaluate_model(pipe, n_t2i=15, n_vqa=40, n_edit=15, num_timesteps=20, progress=False, seed=999)
        keys = ("t2i_color_acc", "t2i_position_acc", "t2i_shape_acc", "t2i_size_acc", "vqa_acc",
                "vqa_position_acc", "edit_success")
        return {k: round(m[k], 3) for k in keys}
    return run


def watch_scenes() -> tuple[list[Scene], list[tuple[Scene, str]]]:
    """The fixed held-out prompts and questions a watched run draws and asks at every look (``watch_every``)."""
    from .world import QUESTIONS, held_out_scene

    rng = random.Random(31)
    prompts = [held_out_scene(rng) for _ in range(4)]
    questions = [(held_out_scene(rng), kind) for kind in QUESTIONS]
    return prompts, questions


def _watch(ae, tokenizer, special):
    """What the EMA model draws for the watched prompts and answers to the watched questions, as PNG (base64)
    and words: the log then shows the pictures improving as the loss falls (notebook 05b)."""
    def run(ema_model) -> dict:
        import base64
        import io

        from ..inference.pipeline import Pipeline
        from .data import micro_transform
        from .world import QUESTIONS, caption, render

        pipe = Pipeline(ema_model, ae, tokenizer, special, vae_transform=micro_transform(),
                        vit_transform=micro_transform())
        prompts, questions = watch_scenes()
        pictures = []
        for scene in prompts:
            buffer = io.BytesIO()
            pipe.generate(caption(scene, size=True), seed=0, num_timesteps=20, progress=False).image.save(buffer, "PNG")
            pictures.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
        answers = [pipe.answer(render(scene), QUESTIONS[kind].format(shape=scene.shape), max_tokens=4).strip()
                   for scene, kind in questions]
        return {"pictures": pictures, "answers": answers}
    return run


def default_state_path(out: Path) -> Path:
    """The resumable state's folder, beside the output folder."""
    return out.parent / f".{out.name}.train_state"


def train(out: Path, s: TrainSettings, log=print, state_path: Path | None = None, bf16: bool | None = None) -> dict:
    """Train the autoencoder and micro-BAGEL from scratch (or resume from ``state_path``, which is written
    every ``s.state_every_s`` seconds); write an official-layout folder to ``out`` and its training log.
    Runs on ``s.threads`` CPU threads and gives the process its old thread count back afterwards. The
    autoencoder runs under bf16 autocast if ``bf16`` (default: only where the CPU has native bf16 units,
    ``precision.cpu_path``), else in float32; the log records which (``cpu_path``)."""
    if not PartialState().is_main_process:  # under torchrun one process speaks for all
        log = _quiet
    with cpu_threads(s.threads):
        return _train(out, s, log, state_path, cpu_path(bf16))


def _quiet(*_) -> None:
    return None


def _train(out: Path, s: TrainSettings, log, state_path: Path | None, path: CpuPath) -> dict:
    recipe = json.loads(json.dumps(asdict(s), default=str))  # what a state must have been made with
    saver = Resumable(state_path, s.state_every_s, recipe, write=PartialState().is_main_process)
    state = saver.load()  # every process reads it; only the main one writes (train_bagel)
    if state is not None and state["settings"] != recipe:
        changed = sorted(k for k in recipe if state["settings"].get(k) != recipe[k])
        raise ValueError(f"the training state {state_path} was made with other settings ({', '.join(changed)}): "
                         "run with the same ones to continue it, or delete the file to start again")
    done_before = state["elapsed"] if state else 0.0
    t0 = time.time()

    def clock():
        return done_before + time.time() - t0

    tokenizer, special = build_tokenizer()
    cfg = replace(micro_config(vocab_size=((len(tokenizer) + 7) // 8) * 8, size=s.size), mot=s.mot)
    with torch.random.fork_rng():  # the initial weights come from the seed, without touching the global RNG
        torch.manual_seed(s.seed)
        model, ae = Bagel(cfg), AutoEncoder(cfg.vae)
    torch.nn.init.zeros_(model.llm2vae.weight)  # as BAGEL: the velocity head starts at zero
    torch.nn.init.zeros_(model.llm2vae.bias)
    log(f"micro-BAGEL: {sum(p.numel() for p in model.parameters()):,} parameters, autoencoder "
        f"{sum(p.numel() for p in ae.parameters()):,}" + (f"; resuming at {state['phase']} step {state['step']}"
                                                          if state else ""))
    log(f"autoencoder: {path}; training on {s.threads} thread(s)")
    if state is not None and state.get("cpu_path", path.name) != path.name:
        log(f"note: the state was saved on the {state['cpu_path']} path; this run continues on {path.name}, so its "
            "bits will differ from a run that never stopped")
    saver = _WithExtra(saver, {"cpu_path": path.name})
    ae_stats = _autoencoder(ae, s, state=state, saver=saver, clock=clock, log=log, path=path)
    table = PosteriorTable(ae, s.encode_block, path)
    if s.shipped_autoencoder:  # its scale and shift were measured when it was trained
        shipped = read_config(CHECKPOINT).vae
        ae.config = replace(ae.config, scale_factor=shipped.scale_factor, shift_factor=shipped.shift_factor)
    else:
        set_scale_and_shift(ae, table.means(scale_scenes(s.scale_scenes)))
    for p in ae.parameters():
        p.requires_grad_(False)
    on_eval = _quick_eval(ae, tokenizer, special) if s.eval_every else None
    on_watch = _watch(ae, tokenizer, special) if s.watch_every else None
    ema, history = _bagel_stages(model, tokenizer, special, table, ae.config, s=s, log=log,
                                 observers=(on_eval, on_watch), state=state, clock=clock,
                                 saver=_WithExtra(saver, {"ae_final": ae.state_dict(), "ae_stats": ae_stats}))
    seconds = clock()
    log(f"trained in {seconds:.0f} s")
    if not PartialState().is_main_process:  # under torchrun: one process writes the folder
        return {"train_seconds": round(seconds, 1), "cpu_path": str(path), "loss": history}
    if s.weights_dtype != "float32":
        ema = copy.deepcopy(ema).to(getattr(torch, s.weights_dtype))
    save_bagel(out, ema, ae, tokenizer)
    error = reconstruction_error(ae, min(64, s.ae_eval_scenes))
    stats = {"seed": s.seed, "train_seconds": round(seconds, 1), "ae_reconstruction_error": round(error, 3),
             "ae_rec_loss": ae_stats["ae_rec_loss"], "settings": asdict(s), "ae_curve": ae_stats["ae_curve"],
             "ae_psnr": ae_stats["ae_psnr"], "ae_attribute_acc": ae_stats["ae_attribute_acc"],
             "loss": {"ce": history["ce"], "mse": history["mse"]}, "align_steps": s.align_steps,
             "final_start": history.get("final_start"), "evals": history["evals"], "cpu_path": str(path),
             "scenes_encoded": table.encoded, **({"watch": history["watch"]} if "watch" in history else {})}
    (out / "train_log.json").write_text(json.dumps(stats, default=str, separators=(",", ":")))
    return stats


def _autoencoder(ae: AutoEncoder, s: TrainSettings, *, state: dict | None, saver, clock, log, path: CpuPath) -> dict:
    """Phase 1: train the autoencoder (or take the shipped one); its quality on held-out scenes."""
    if state is not None and state["phase"] != "ae":  # a state of phase 2 carries the finished autoencoder
        ae.load_state_dict(state["ae_final"])
        return state["ae_stats"]
    if s.shipped_autoencoder:
        load_autoencoder(ae, CHECKPOINT)
        ae_stats, source = {"ae_rec_loss": None, "ae_curve": []}, "the shipped autoencoder"
    else:
        ae_stats = train_autoencoder(ae, s, state=state, saver=saver, clock=clock, path=path)
        source = f"autoencoder after {clock():.0f} s"
    ae_stats.update(autoencoder_quality(ae, s.ae_eval_scenes))
    log(f"{source}: PSNR {ae_stats['ae_psnr']} dB, every attribute read back right on "
        f"{ae_stats['ae_attribute_acc']:.1%} of held-out reconstructions")
    return ae_stats


def _bagel_stages(model, tokenizer, special, table, ae_cfg, *, s: TrainSettings, log, observers: tuple,
                  state: dict | None, saver, clock) -> tuple:
    """Stage 2 (alignment, then mixed) and, if the recipe has one, stage 3 (``FinalStage``) from the weights
    stage 2 would ship. ``observers``: (on_eval, on_watch), either None. Returns (the EMA model, the log of both
    stages, stage 3 starting at ``final_start``)."""
    on_eval, on_watch = observers
    phase = state["phase"] if state is not None else None
    if phase == "final":  # stage 2 had finished when the state was saved
        history = state["stage2"]
    else:
        ema, history = train_bagel(model, tokenizer, special, table, ae_cfg, s=s, log=log, on_eval=on_eval,
                                   on_watch=on_watch, state=state if phase == "bagel" else None, saver=saver,
                                   clock=clock)
    f = s.final
    if f is None:
        return ema, history
    if phase != "final":  # the training model (its frozen tables stay frozen) takes the weights as stored
        dtype = getattr(torch, s.weights_dtype)
        model.load_state_dict({k: v.to(dtype).float() for k, v in ema.state_dict().items()})
        log(f"stage 3: {f.steps} steps from the stored weights, question pictures moved by up to "
            f"{f.question_shift} px")
    freeze_for_final(model, f)
    ema, final = train_bagel(model, tokenizer, special, table, ae_cfg, s=final_settings(s), log=log, on_eval=on_eval,
                             on_watch=on_watch, state=state if phase == "final" else None, clock=clock,
                             phase="final", saver=_WithExtra(saver, {"stage2": history}))
    start = len(history["ce"])
    merged = {"ce": history["ce"] + final["ce"], "mse": history["mse"] + final["mse"], "final_start": start,
              "evals": history["evals"] + [{**e, "step": e["step"] + start} for e in final["evals"]]}
    watched = history.get("watch", []) + [{**w, "step": w["step"] + start} for w in final.get("watch", [])]
    return ema, {**merged, **({"watch": watched} if watched else {})}


def final_settings(s: TrainSettings) -> TrainSettings:
    """The settings ``train_bagel`` runs stage 3 with: ``s`` with ``s.final``'s numbers, no alignment."""
    f = s.final
    return replace(s, seed=s.seed + f.seed_offset, align_steps=0, steps=f.steps, lr=f.lr, warmup=f.warmup,
                   ema=f.ema, task_weights=f.task_weights, question_shift=f.question_shift, final=None)


class _WithExtra:
    """A ``Resumable`` whose states also carry ``extra`` (the finished autoencoder, stage 2's log)."""

    def __init__(self, saver, extra: dict):
        self.saver, self.extra = saver, extra

    def maybe_save(self, make_state, force: bool = False):
        self.saver.maybe_save(lambda: {**make_state(), **self.extra}, force)

    def attach(self, accelerator) -> None:
        self.saver.attach(accelerator)

    def restore(self) -> None:
        self.saver.restore()


__all__ = ["FinalStage", "LONG", "PosteriorTable", "QUICK", "RECIPES", "TrainSettings", "final_settings",
           "freeze_for_final", "scale_scenes", "train", "train_autoencoder", "train_bagel"]
