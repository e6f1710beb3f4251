"""Fine-tune an official-layout BAGEL folder on your own JSONL data.

    python -m bagel_lite.training.finetune --model FOLDER --data mine.jsonl --out OUT --steps 500

One CPU or GPU as it stands; several processes (CPU: gloo; GPUs: NCCL) by launching the same command with
``torchrun --nproc_per_node N -m bagel_lite.training.finetune ...``; sharded with ``--fsdp``. Before anything
loads, the memory planner prints what one GPU will hold and refuses a configuration that does not fit.

What BAGEL's official fine-tuning does, kept as defaults here: the VAE frozen; both experts and the ViT trained;
AdamW at lr 2e-5 (betas 0.9 / 0.95); an EMA of the weights at 0.9999, which is what gets saved; packed
micro-batches of 10,240 tokens (11,520 at most); condition dropout 0.1 (text) / 0.3 (ViT) / 0.3 (VAE).
``--train generation`` trains only the generation side (the ``_moe_gen`` expert, ``time_embedder``,
``vae2llm``, ``llm2vae``), ``--train understanding`` everything else but the VAE.

Every ``--save-every`` steps a resumable state (model, optimiser, RNG, step, EMA, the log) is written beside the
output (``OUT.state``), atomically: the same command resumes a killed run from its last state. The output folder
is the EMA as an official-layout checkpoint that ``bagel_lite.load`` opens. Loss curves go to ``OUT/train_log.json``
and, with ``--tracker tensorboard``, to TensorBoard (``tensorboard --logdir OUT/logs``).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from ..loading.checkpoint import load_bagel, read_config, save_bagel
from ..loading.transforms import ImageTransform
from .data import DataError, Dropout, ExampleReader, micro_batch, parse_data_arg, read_jsonl
from .planner import check_fits_for_finetune, plan_of_finetune, set_trainable
from .trainer import StepSettings, Trainer, load_state, make_accelerator, save_state, shard


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bagel_lite.training.finetune", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="official-layout folder to start from")
    ap.add_argument("--data", nargs="+", required=True, help="JSONL files, each optionally FILE:WEIGHT")
    ap.add_argument("--out", type=Path, required=True, help="folder to write the fine-tuned checkpoint to")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--ema", type=float, default=0.9999, help="EMA decay (0: save the trained weights themselves)")
    ap.add_argument("--tokens", type=int, default=10_240, help="expected tokens per packed micro-batch")
    ap.add_argument("--max-tokens", type=int, default=11_520, help="never more tokens in one micro-batch")
    ap.add_argument("--accumulate", type=int, default=1, help="micro-batches per process per optimiser step")
    ap.add_argument("--train", choices=("all", "generation", "understanding"), default="all")
    ap.add_argument("--freeze-vit", action="store_true")
    ap.add_argument("--timestep-shift", type=float, default=1.0, help="shift of the training flow times")
    ap.add_argument("--image-size", type=int, default=None,
                    help="resize every image to about this side (default: the official 512-1024 VAE / 224-980 ViT)")
    ap.add_argument("--bf16", action="store_true", help="bfloat16 compute over float32 weights")
    ap.add_argument("--fsdp", action="store_true", help="shard weights, gradients and optimiser state (FSDP2)")
    ap.add_argument("--checkpointing", action="store_true", help="activation checkpointing per decoder layer")
    ap.add_argument("--cpu", action="store_true", help="train on the CPU even where a GPU is present")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-every", type=int, default=100, help="steps between resumable states (0: never)")
    ap.add_argument("--stop-after", type=int, default=0,
                    help="save a resumable state and stop after this many steps (the same command continues)")
    ap.add_argument("--state", type=Path, default=None, help="resumable state folder (default: OUT.state)")
    ap.add_argument("--tracker", default=None, help="also log to this accelerate tracker, e.g. tensorboard")
    ap.add_argument("--gpu-memory-gib", dest="gpu_memory", type=float, default=80.0,
                    help="GiB per GPU, for the memory planner")
    ap.add_argument("--no-plan", action="store_true", help="skip the memory planner's check")
    return ap


def settings_of(args, processes: int) -> dict:
    """What a resumable state must have been made with (a different setting cannot continue it). Paths count by
    where they point, so a resume from another folder, or with absolute paths, is the same run."""
    keys = ("model", "data", "steps", "lr", "warmup", "ema", "tokens", "max_tokens", "accumulate", "train",
            "freeze_vit", "timestep_shift", "image_size", "bf16", "fsdp", "seed")
    chosen = {k: v for k, v in vars(args).items() if k in keys}
    chosen["model"] = str(Path(args.model).resolve())
    chosen["data"] = [str(Path(d).resolve()) if ":" not in Path(d).name else d for d in args.data]
    return {**chosen, "processes": processes}  # the global batch depends on how many there are


def main(argv=None) -> Path | None:
    """Run the command; returns the output folder (None when ``--stop-after`` stopped it early)."""
    args = build_parser().parse_args(argv)
    if args.tokens > args.max_tokens:
        raise SystemExit(f"--tokens {args.tokens} is over --max-tokens {args.max_tokens}: raise --max-tokens")
    try:
        sources = [read_jsonl(*parse_data_arg(d)) for d in args.data]
    except DataError as e:
        raise SystemExit(f"data: {e}") from None
    args.cpu = args.cpu or not torch.cuda.is_available()
    acc = make_accelerator(cpu=args.cpu, bf16=args.bf16 and not args.fsdp, accumulate=args.accumulate,
                           log_dir=args.out / "logs", tracker=args.tracker)

    def log(*a):
        if acc.is_main_process:
            print(*a, flush=True)

    if not args.no_plan:  # before any weight is read: print the plan, refuse one that does not fit a GPU
        if args.cpu:
            log("memory plan (what one GPU would hold; this run is on the CPU, so it only informs):")
        check_fits_for_finetune(read_config(args.model), args, log)
    if args.warmup >= args.steps:
        log(f"note: --warmup {args.warmup} is not shorter than --steps {args.steps}: the learning rate never "
            f"reaches --lr {args.lr}")
    loaded = load_bagel(args.model, device=acc.device)
    trainer = prepare(loaded.model, acc, args, log)
    history = resume(acc, trainer, args, log)
    try:
        done = train_steps(acc, trainer, loaded, args, sources=sources, history=history, log=log)
    except DataError as e:  # found while packing: stop every process with the reason, not a traceback
        raise SystemExit(f"data: {e}") from None
    if not done:
        acc.end_training()
        return None
    write_result(acc, trainer, loaded, args, {"settings": settings_of(args, acc.num_processes), "loss": history,
                                              "processes": acc.num_processes})
    log(f"wrote {args.out}")
    return args.out


def train_steps(acc, trainer: Trainer, loaded, args, *, sources, history: dict, log) -> bool:
    """The steps from ``trainer.step`` on; a resumable state every ``--save-every`` steps. False when
    ``--stop-after`` stopped it (after saving a state), True when the last step is done."""
    patch = loaded.config.vae.downsample * loaded.config.latent_patch_size
    vae_sides, vit_sides = ((args.image_size, args.image_size),) * 2 if args.image_size else ((1024, 512), (980, 224))
    reader = ExampleReader(loaded.tokenizer, loaded.ae, ImageTransform(*vae_sides, patch),
                           ImageTransform(*vit_sides, loaded.config.vit.patch_size), Dropout())
    first, settings = trainer.step, settings_of(args, acc.num_processes)
    for step in range(first, args.steps):
        batches = []
        for a in range(args.accumulate):  # this process's micro-batches k of the global batch
            seq, noise = micro_batch(sources, reader, loaded.config, loaded.special, seed=args.seed, step=step,
                                     index=acc.process_index * args.accumulate + a, expected_tokens=args.tokens,
                                     max_tokens=args.max_tokens)
            batches.append(seq.batch(args.timestep_shift, noise))
        out = trainer.train_step(batches)
        history["ce"].append(round(out["ce"], 5))
        history["mse"].append(round(out["mse"], 5))
        acc.log({"ce": out["ce"], "mse": out["mse"], "lr": trainer.opt.param_groups[0]["lr"]}, step=step)
        log(f"step {step + 1}/{args.steps}: ce {out['ce']:.4f}  mse {out['mse']:.4f}")
        last = step + 1 == args.steps
        stop = args.stop_after and step + 1 - first == args.stop_after and not last
        if (args.save_every and (step + 1) % args.save_every == 0 and not last) or stop:
            save_state(acc, state_dir(args), {"settings": settings, "history": history}, trainer=trainer)
        if stop:
            log(f"stopped after {args.stop_after} steps; the same command continues from step {step + 2}")
            return False
    return True


def prepare(model, acc, args, log) -> Trainer:
    """Which parameters train, checkpointing, sharding; the ``Trainer``, registered for ``save_state``."""
    trained = set_trainable(model, plan_of_finetune(args, acc.num_processes))  # the parts the planner counted
    model.train().set_checkpointing(args.checkpointing)
    if args.fsdp:
        shard(model, bf16=args.bf16)
    s = StepSettings(lr=args.lr, warmup=args.warmup, steps=args.steps, ema=args.ema or None)
    trainer = Trainer(model, acc, s, sharded=args.fsdp)
    acc.register_for_checkpointing(trainer)
    if args.tracker:
        acc.init_trackers("finetune", config={k: str(v) for k, v in settings_of(args, acc.num_processes).items()})
    mode = "one process" if acc.num_processes == 1 else acc.distributed_type.value.lower().replace("_", " ")
    precision = ("bf16 compute, float32 weights and reduction (FSDP mixed precision)" if args.fsdp else
                 "bf16 autocast over float32 weights") if args.bf16 else "float32"
    log(f"{acc.num_processes} process(es) on {acc.device} ({mode}): {trained:,} parameters "
        f"train ({args.train}), {precision}{', FSDP' if args.fsdp else ''}"
        f"{', checkpointing' if args.checkpointing else ''}; global batch = {acc.num_processes} x {args.accumulate} "
        f"micro-batches of ~{args.tokens} tokens")
    return trainer


def state_dir(args) -> Path:
    return args.state or args.out.with_name(args.out.name + ".state")


def resume(acc, trainer: Trainer, args, log) -> dict:
    """The loss history so far: empty, or that of the complete state found (model, optimiser, RNG, step and EMA
    are restored into the registered objects)."""
    extra = load_state(acc, state_dir(args), trainer=trainer)
    if extra is None:
        return {"ce": [], "mse": []}
    settings = settings_of(args, acc.num_processes)
    if extra["settings"] != settings:
        changed = sorted(k for k in settings if extra["settings"].get(k) != settings[k])
        raise SystemExit(f"the state {state_dir(args)} was made with other settings ({', '.join(changed)}): run "
                         "with the same ones to continue it, or delete the folder to start again")
    log(f"resuming from {state_dir(args)} at step {trainer.step}")
    return extra["history"]


def write_result(acc, trainer: Trainer, loaded, args, log_json: dict) -> None:
    """The EMA (gathered from every process's shard) as an official-layout folder, and the training log."""
    from ..model.bagel import Bagel

    ema = trainer.ema_state_dict()  # every process takes part in gathering the shards
    if acc.is_main_process:
        with torch.random.fork_rng():
            final = Bagel(loaded.config)
        final.load_state_dict(ema, strict=True)
        save_bagel(args.out, final, loaded.ae.float().cpu(), loaded.tokenizer)
        (args.out / "train_log.json").write_text(json.dumps(log_json))
        states = state_dir(args)
        for stale in (states, states.with_name(states.name + ".tmp"), states.with_name(states.name + ".old")):
            if stale.exists():  # the run is finished: a later run into the same folder starts afresh
                shutil.rmtree(stale)
    acc.wait_for_everyone()
    acc.end_training()


if __name__ == "__main__":
    main()
