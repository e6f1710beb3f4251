"""Which CPU path a training run takes: bfloat16 autocast where the CPU computes bf16 natively, float32
elsewhere -- and how many threads it runs on.

On a CPU with bf16 units (AVX-512 BF16 or AMX on x86, FEAT_BF16 on ARM) autocast to bf16 makes the micro
autoencoder a few times faster. On a CPU without them (AVX2 only) PyTorch emulates bf16 and the same encoder
runs about 35 times *slower* than in float32 (measured: 16 scenes in 7.6 s against 0.21 s). So nothing here
assumes bf16 is fast: ``cpu_bf16`` detects it, and every caller says which path ran. The two paths compute
different bits (bf16 rounds every product), so results agree between them only within noise.

Set ``BAGEL_LITE_CPU_BF16=0`` to force float32 (what a CPU without bf16 runs) and ``=1`` to force bf16.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch

ENV_BF16 = "BAGEL_LITE_CPU_BF16"
X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names of the units that compute bf16 natively


def _x86_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _arm_mac_bf16() -> bool:
    try:
        out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True,
                             timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return out.strip() == "1"


def cpu_bf16_units() -> str | None:
    """The name of this CPU's native bf16 feature (``"avx512_bf16"``, ``"amx_bf16"``, ``"FEAT_BF16"``), or
    None when it has none (then bf16 is emulated, and slow)."""
    flags = _x86_flags()
    for flag in X86_BF16_FLAGS:
        if flag in flags:
            return flag
    if platform.system() == "Darwin" and platform.machine() == "arm64" and _arm_mac_bf16():
        return "FEAT_BF16"
    return None


@dataclass(frozen=True)
class CpuPath:
    """The float path a CPU run takes, and why (printed in training logs and progress lines)."""

    bf16: bool
    reason: str

    @property
    def name(self) -> str:
        return "bfloat16 autocast" if self.bf16 else "float32"

    def autocast(self) -> AbstractContextManager:
        """``torch.autocast`` to bf16 on the bf16 path; does nothing on the float32 path."""
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16)

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


def cpu_path(bf16: bool | None = None) -> CpuPath:
    """The path to take: ``bf16`` if given; else ``$BAGEL_LITE_CPU_BF16`` (0 or 1) if set; else bf16 exactly
    when the CPU has native bf16 units."""
    if bf16 is not None:
        return CpuPath(bool(bf16), "chosen by the caller")
    forced = os.environ.get(ENV_BF16, "").strip()
    if forced:
        if forced not in ("0", "1"):
            raise ValueError(f"{ENV_BF16}={forced!r}: use 1 (bf16 autocast) or 0 (float32), or unset it to detect")
        return CpuPath(forced == "1", f"{ENV_BF16}={forced}")
    units = cpu_bf16_units()
    if units:
        return CpuPath(True, f"this CPU computes bf16 natively: {units}")
    return CpuPath(False, f"this CPU has no native bf16 ({torch.backends.cpu.get_cpu_capability()}): "
                          "bf16 would be emulated, many times slower")


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat (None where there is none)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(window_s: float = 0.5) -> float | None:
    """How many cores other jobs keep busy now: measured over ``window_s`` while this process sleeps (Linux),
    else the 1-minute load average (which also counts this process's own recent work); None if unknown."""
    before = _cpu_times()
    if before is not None:
        time.sleep(window_s)
        after = _cpu_times()
        if after is not None and after[1] > before[1]:
            cores = os.cpu_count() or 1
            return cores * (after[0] - before[0]) / (after[1] - before[1])
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def choose_threads(requested: int | None = None) -> tuple[int, str]:
    """(threads, why) for a CPU run: ``requested`` if given; else this process's cores minus those other jobs
    keep busy, at least 1. With two threads on two cores beside another busy job, OpenMP's spin-waits made an
    evaluation 40 times slower (3,991 s against 96 s); one thread kept it steady."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if requested is not None:
        if requested < 1:
            raise ValueError(f"threads must be at least 1, got {requested}")
        return requested, f"asked for ({cores} cores)"
    busy = busy_cores()
    if busy is None:
        return cores, f"all {cores} cores (how busy they are is unknown)"
    free = max(1, min(cores, cores - round(busy)))
    if free < cores:
        return free, f"{cores} cores, {busy:.1f} busy with other jobs"
    return free, f"all {cores} cores, machine quiet ({busy:.1f} busy)"


__all__ = ["CpuPath", "ENV_BF16", "busy_cores", "choose_threads", "cpu_bf16_units", "cpu_path"]
