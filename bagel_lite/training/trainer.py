"""One training step of BAGEL under accelerate, on one process or many, whole or sharded.

A *step* is one optimiser update from a **global batch**: the packed micro-batches of every process and every
accumulation round. Each process runs ``Bagel.forward`` on its own micro-batches; the gradients are summed
(DDP's all-reduce, or FSDP's reduce-scatter) and the optimiser steps once.

**Weighting the losses so that the split does not matter.** ``forward`` returns the *mean* CE over its own text
targets and the *mean* MSE over its own noisy latent tokens. The global batch's loss is the mean over *all* its
targets: ``CE = sum_i n_i * ce_i / N`` (n_i targets in micro-batch i, N in the global batch). DDP averages the
gradients of W processes and accelerate divides each of A accumulation rounds' loss by A, so micro-batch i
back-propagates ``W * A * n_i / N * ce_i`` (the same for the MSE, counted in tokens): after the two divisions,
exactly the gradient of the global mean. The counts N come from an all-reduce of each process's counts. So one
process accumulating two micro-batches, and two processes with one each, compute the same update (up to the
order of float additions); BAGEL's official trainer weights its losses by token counts the same way.

**The EMA** (``ema.py``'s rule, ``ema <- decay * ema + (1 - decay) * weight``) is held as one tensor per
parameter, cloned from the parameter. Under FSDP a parameter is a sharded ``DTensor``, and so is its clone:
each process averages only its own shard (no communication at all per step), and the shards are gathered once,
when the EMA is saved (``ema_state_dict``). That is why it is kept sharded: a gathered EMA would hold a whole
model copy on every GPU, as much memory as the bf16 weights twice over.

**Sharding** (``shard``): FSDP2's ``fully_shard`` on each decoder layer, then on the whole model, as the
official trainer wraps each ``Qwen2MoTDecoderLayer``. With ``bf16`` the layers compute in bfloat16 and reduce
gradients in float32 (``MixedPrecisionPolicy``); the float32 master weights and AdamW's states stay sharded.

**Saving** (``save_state`` / ``load_state``): accelerate writes the model, the optimiser, its RNG states and the
objects registered with it into a fresh folder (under FSDP every process writes its own shards of the model, the
optimiser and the EMA with ``torch.distributed.checkpoint``), then a marker file; only then does the folder take
the place of the previous state (a rename). A run killed at any moment leaves either the previous complete state
or the new one, never a half-written one that ``load_state`` would take.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs

from ..model.bagel import Bagel
from ..model.batch import CE_WEIGHT, MSE_WEIGHT, PackedBatch
from .ema import ema_decay
from .optimization import cosine_lr, set_lr

COMPLETE = "complete.json"  # written last into a state folder: without it the folder is not a state


@dataclass
class StepSettings:
    """The optimiser and the step. (The fine-tuning command passes the official fine-tuning lr 2e-5 and EMA
    0.9999; the EMA's decay warms up as ``ema.ema_decay`` says.)"""

    lr: float = 1e-4
    warmup: int = 200
    floor: float = 0.1  # the cosine ends at floor * lr
    steps: int = 1000
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-15  # the official trainer's AdamW epsilon
    weight_decay: float = 0.0
    clip: float = 1.0  # gradient norm clipping
    ema: float | None = 0.9999  # None: no EMA
    ce_weight: float = CE_WEIGHT
    mse_weight: float = MSE_WEIGHT


def make_accelerator(*, cpu: bool = False, bf16: bool = False, accumulate: int = 1, log_dir: str | Path | None = None,
                     tracker: str | None = None) -> Accelerator:
    """An ``Accelerator``: launched with ``torchrun --nproc_per_node N`` it finds the other processes itself
    (several CPU processes: gloo, ``MULTI_CPU``; GPUs: ``MULTI_GPU``). ``bf16``: autocast to bfloat16 over float32
    weights. ``tracker``: "tensorboard" (or anything accelerate supports) writes the curves under ``log_dir``.
    Parameters a step does not use (the ViT in a batch without pictures) are allowed under DDP."""
    return Accelerator(cpu=cpu, mixed_precision="bf16" if bf16 else "no", gradient_accumulation_steps=accumulate,
                       log_with=tracker, project_dir=str(log_dir) if log_dir else None,
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def shard(model: Bagel, bf16: bool = False) -> Bagel:
    """FSDP2: each decoder layer is one unit of sharding (gathered for its forward and backward, freed after),
    the rest of the model (embeddings, ViT, heads) the root unit. Needs ``torch.distributed`` initialised
    (``make_accelerator`` under torchrun does it)."""
    from torch.distributed import get_world_size
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32)
    for layer in model.language_model.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


class Trainer:
    """The model, its optimiser and its EMA under an ``Accelerator``. ``sharded``: the model was ``shard``-ed
    (FSDP2) and is not wrapped again; otherwise ``prepare`` wraps it (DDP when there are several processes)."""

    def __init__(self, model: Bagel, accelerator: Accelerator, s: StepSettings, *, sharded: bool = False):
        self.accelerator, self.s, self.step = accelerator, s, 0
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("nothing to train: every parameter of the model is frozen")
        opt = torch.optim.AdamW(params, lr=s.lr, betas=s.betas, eps=s.eps, weight_decay=s.weight_decay)
        if sharded:  # FSDP2 already placed every shard; the optimiser's state is sharded like its parameters
            self.model, self.opt = model, opt
        else:
            self.model, self.opt = accelerator.prepare(model, opt)
        self.params, self.sharded = params, sharded
        self.ema = None if s.ema is None else [p.detach().clone() for p in self.bare.parameters()]

    @property
    def bare(self) -> Bagel:
        """The model without its DDP wrapper (the same object when sharded or on one process)."""
        return self.accelerator.unwrap_model(self.model)

    def _counts(self, batches: list[PackedBatch]) -> tuple[float, float]:
        """(CE targets, MSE tokens) of the whole global batch: every process's counts, summed."""
        local = torch.tensor([[float(sum(b.num_ce_tokens for b in batches)),
                               float(sum(b.num_mse_tokens for b in batches))]], device=self.accelerator.device)
        total = self.accelerator.reduce(local, "sum") if self.accelerator.num_processes > 1 else local
        return float(total[0, 0]), float(total[0, 1])

    def train_step(self, batches: list[PackedBatch], lr: float | None = None) -> dict[str, float]:
        """One optimiser step from this process's micro-batches (as many as the accelerator accumulates).
        Returns the global batch's mean CE and MSE (the same on every process)."""
        acc = self.accelerator
        if len(batches) != acc.gradient_accumulation_steps:
            raise ValueError(f"a step takes {acc.gradient_accumulation_steps} micro-batch(es) per process "
                             f"(gradient accumulation), got {len(batches)}")
        n_ce, n_mse = self._counts(batches)
        scale = acc.num_processes * len(batches)  # undone by DDP's average and accelerate's division
        set_lr(self.opt, lr if lr is not None else cosine_lr(self.step, self.s.steps, self.s.lr, self.s.warmup,
                                                             self.s.floor))
        sums = torch.zeros(2, dtype=torch.float64)
        single = scale == 1  # one micro-batch, one process: weights of exactly 1, the bytes of a plain loop
        for batch in batches:
            with acc.accumulate(self.model):
                out = self.model(batch.to(acc.device), ce_weight=self.s.ce_weight, mse_weight=self.s.mse_weight)
                w_ce = 1.0 if single else scale * batch.num_ce_tokens / max(n_ce, 1.0)
                w_mse = 1.0 if single else scale * batch.num_mse_tokens / max(n_mse, 1.0)
                acc.backward(self.s.ce_weight * out["ce"] * w_ce + self.s.mse_weight * out["mse"] * w_mse)
                if acc.sync_gradients:  # the last micro-batch of the step
                    if self.s.clip:
                        acc.clip_grad_norm_(self.params, self.s.clip)
                    self.opt.step()
                    self.opt.zero_grad()
            sums += torch.tensor([out["ce"].item() * batch.num_ce_tokens, out["mse"].item() * batch.num_mse_tokens],
                                 dtype=torch.float64)
            last = out
        if self.ema is not None:
            decay = ema_decay(self.step, self.s.ema)
            with torch.no_grad():
                for pe, pm in zip(self.ema, self.bare.parameters(), strict=True):
                    pe.lerp_(pm.detach().to(pe.dtype), 1 - decay)
        self.step += 1
        if single:
            return {"ce": last["ce"].item(), "mse": last["mse"].item()}
        total = acc.reduce(sums[None].to(acc.device), "sum")[0] if acc.num_processes > 1 else sums
        return {"ce": float(total[0]) / max(n_ce, 1.0), "mse": float(total[1]) / max(n_mse, 1.0)}

    # -- what gets saved --------------------------------------------------------------------------------------

    def ema_state_dict(self) -> dict[str, torch.Tensor]:
        """The EMA as a full (gathered) state dict of the bare model's parameters, on the CPU. Every process
        must call it under FSDP (the gather is collective); there only the main process gets the tensors (the
        others an empty dict), so that no other process ever holds a whole copy."""
        source = self.ema if self.ema is not None else [p.detach() for p in self.bare.parameters()]
        keep = not self.sharded or self.accelerator.is_main_process  # sharded: only the main process keeps them
        full = {}
        for name, t in zip(self._names(), source, strict=True):
            whole = t.full_tensor() if hasattr(t, "full_tensor") else t  # one tensor gathered at a time
            if keep:
                full[name] = whole.detach().to("cpu", copy=True)
        return full

    def ema_model(self) -> Bagel:
        """A plain (unsharded, CPU) copy of the model holding the EMA weights."""
        state = self.ema_state_dict()
        with torch.random.fork_rng():  # the constructor's random init must not move the global RNG
            model = Bagel(self.bare.config)
        model.load_state_dict(state, strict=True)
        for p in model.parameters():
            p.requires_grad_(False)
        return model.eval()

    def state_dict(self) -> dict:
        """What accelerate pickles of the trainer (from the main process): the step, and the EMA unless it is
        sharded. A sharded run's model, optimiser state and EMA are written shard by shard (``save_shards``)."""
        return {"step": self.step, "ema": None if self.ema is None or self.sharded else self.ema_state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        if state["ema"] is not None:
            with torch.no_grad():
                for name, pe in zip(self._names(), self.ema, strict=True):
                    pe.copy_(state["ema"][name])

    def _names(self) -> list[str]:
        return [n for n, _ in self.bare.named_parameters()]

    def _sharded_state(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model, optim = get_state_dict(self.model, self.opt)  # DTensors: each process's own shards
        return {"model": model, "optim": optim, "ema": dict(zip(self._names(), self.ema or [], strict=False))}

    def save_shards(self, folder: Path) -> None:
        """Under FSDP every process writes its own shards of the model, AdamW's moments and the EMA
        (``torch.distributed.checkpoint``): no process ever holds a whole copy, as none does while training."""
        import torch.distributed.checkpoint as dcp

        dcp.save(self._sharded_state(), checkpoint_id=str(folder))

    def load_shards(self, folder: Path) -> None:
        """Read ``save_shards``'s files back, each process its own shards, in place."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        state = self._sharded_state()  # the tensors to fill (the optimiser's states are created first)
        dcp.load(state, checkpoint_id=str(folder))
        set_state_dict(self.model, self.opt, model_state_dict=state["model"], optim_state_dict=state["optim"])


SHARDS = "shards"  # the folder of a sharded run's model, optimiser and EMA inside a state


def save_state(accelerator: Accelerator, folder: Path, extra: dict, files: dict | None = None,
               trainer: Trainer | None = None) -> None:
    """Save everything registered with ``accelerator`` (model, optimiser, RNG, ``register_for_checkpointing``
    objects), a sharded ``trainer``'s shards, ``files`` (name -> object, ``torch.save``-d) and ``extra`` (JSON) into
    ``folder``, atomically: written beside it, marked complete, then renamed into place. Every process must call
    it."""
    folder = Path(folder)
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)  # what a killed save left behind
        if old.exists() and (folder / COMPLETE).is_file():
            shutil.rmtree(old)  # a save killed after its last rename left the state before it
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if trainer is not None and trainer.sharded:
        trainer.save_shards(tmp / SHARDS)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for name, obj in (files or {}).items():
            torch.save(obj, tmp / name)
        (tmp / COMPLETE).write_text(json.dumps(extra))
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)  # the moment the new state counts
        if old.exists():
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def find_state(folder: Path) -> Path | None:
    """The complete state to resume from: ``folder``, or the previous state if a save was killed between its two
    renames; None if there is none. A folder without its marker is never taken."""
    for candidate in (Path(folder), Path(folder).with_name(Path(folder).name + ".old")):
        if (candidate / COMPLETE).is_file():
            return candidate
    return None


def load_state(accelerator: Accelerator, folder: Path, trainer: Trainer | None = None) -> dict | None:
    """Restore what ``save_state`` wrote (into the registered objects and a sharded ``trainer``); returns its
    ``extra``, or None when there is no complete state."""
    found = find_state(folder)
    if found is None:
        return None
    accelerator.load_state(str(found))
    if trainer is not None and trainer.sharded:
        trainer.load_shards(found / SHARDS)
    return json.loads((found / COMPLETE).read_text())
