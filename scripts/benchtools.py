"""Timing for scripts/bench_*.py: fixed windows of whole steps, after warm-up, alternated.

The method (docs/BENCHMARKS.md): every variant first runs its warm-up
(one pass over every shape that is timed: cuDNN autotuning, compilation, allocator growth),
then one untimed unit of work tells how many units make a window of at least
``min_window_s``; then the variants take turns, one window each (A B A B ...), so that
clock, thermal and load drift fall on all of them alike. A window is a fixed amount of work
timed with CUDA events on the GPU (one sync at its end, none inside) or ``perf_counter`` on
the CPU. Figures are the median [min, max] over the windows, with n.
"""
from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

#: A run whose (max - min) / median exceeds this is flagged as noisy.
NOISY = 0.05


@dataclass
class Spread:
    """Median [min, max] of n samples."""

    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def rel_spread(self) -> float:
        return (max(self.values) - min(self.values)) / self.median if self.median else float("inf")

    def fmt(self, digits: int = 2) -> str:
        flag = " (noisy)" if self.rel_spread > NOISY else ""
        return (f"{self.median:.{digits}f} [{min(self.values):.{digits}f}, {max(self.values):.{digits}f}] "
                f"n={self.n}{flag}")


@dataclass
class Variant:
    """One thing to time: ``window(n)`` runs n units of work (an epoch, a fit, ...) each worth
    ``work`` (model-epochs, epoch-runs, ...) and returns its seconds; ``warmup()`` runs first,
    untimed, and ``finish()`` after the last window."""

    name: str
    window: Callable[[int], float]
    work: float
    warmup: Callable[[], None] = lambda: None
    finish: Callable[[], None] = lambda: None
    units: int = 1  # units per window (raised by calibration)
    rates: list[float] = field(default_factory=list)
    warmup_s: float = float("nan")  # wall seconds of the warm-up (compilation shows here)


def sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(device, fn: Callable[[], None]) -> float:
    """Seconds ``fn`` takes on ``device``: CUDA events around it on the current stream (the
    only sync is at the end), else wall time."""
    if str(device).startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def alternate(variants: list[Variant], windows: int, min_window_s: float = 0.0,
              progress: bool = True) -> list[Variant]:
    """Warm every variant up, size its window to at least ``min_window_s`` seconds, then time
    ``windows`` rounds of one window per variant, in turn.

    Fills ``variant.rates`` (work per second, one per window) and returns the variants."""
    if windows < 1:
        raise ValueError(f"windows = {windows}: need at least 1 (5 or more for a figure of record)")
    for v in variants:
        if progress:
            print(f"# warm-up {v.name}", flush=True)
        t0 = time.perf_counter()
        v.warmup()
        sync("cuda" if torch.cuda.is_available() else "cpu")
        v.warmup_s = time.perf_counter() - t0
        if min_window_s > 0:
            v.units = max(v.units, math.ceil(min_window_s / max(v.window(1), 1e-9)))
    for w in range(windows):
        for v in variants:
            v.rates.append(v.work * v.units / v.window(v.units))
        if progress:
            print(f"# window {w + 1}/{windows}: " + ", ".join(f"{v.name} {v.rates[-1]:.3g}" for v in variants),
                  flush=True)
    for v in variants:
        v.finish()
    return variants


def _nvidia_smi(query: str) -> str:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "n/a"
    except (OSError, subprocess.TimeoutExpired):
        return "n/a"


def device_info(device) -> str:
    """The machine, in one block of ``# key: value`` lines, to print with every figure."""
    lines = [f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}"]
    if str(device).startswith("cuda"):
        p = torch.cuda.get_device_properties(torch.device(device))
        lines += [f"device: {p.name} ({p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs)",
                  f"driver {_nvidia_smi('driver_version')}, CUDA {torch.version.cuda}, "
                  f"cuDNN {torch.backends.cudnn.version()}",
                  f"SM clock, power now: {_nvidia_smi('clocks.sm,power.draw')}"]
    else:
        load = os.getloadavg() if hasattr(os, "getloadavg") else ("n/a",)
        lines += [f"device: CPU, {platform.processor() or 'unknown model'}, {os.cpu_count()} cores, "
                  f"{torch.get_num_threads()} torch threads, load average {', '.join(f'{x:.1f}' for x in load)}"]
    return "\n".join(f"# {x}" for x in lines)
