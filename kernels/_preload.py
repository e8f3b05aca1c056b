"""`preload()`: what a process's first calls would do one by one, done once at start-up.

A warmed process's first call still reads and validates each kernel's table, imports the kernel
modules, loads each warm binary (metadata, cubin into the GPU context) and its C launcher, and builds
each kernel's launch plan: 0.05–0.10 s on the H200 host for a prefill call, at the first request. An
engine that calls `gdn_kernels.preload()` while it starts (after `gdn-tune warmup`, or with
`GDN_TUNE_BINARY_DIR`) moves all of it there, for every binary the warm-up wrote for this GPU, so the
first call of each warmed shape only launches. It never compiles: a shape nobody warmed compiles at its
first call as before (or trips the compile guard).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PreloadReport:
    tables: int  # table files read and validated
    binaries: int  # warm binaries now in memory, loaded on the device with their launchers
    skipped: int  # warm entries for another GPU, other sources or another Triton, or unreadable
    seconds: float


def preload(device: Any = None) -> PreloadReport:
    """Read this device's tables and load every warm binary of its GPU into memory (default: the
    current CUDA device). Call once at start-up, before serving; calling again loads what is new."""
    import torch

    from . import _launch, _tables, _warm

    started = time.perf_counter()
    if device is not None and torch.device(device).type != "cuda":
        raise ValueError(f"preload: device must be a CUDA device, got {device}")
    if not torch.cuda.is_available():
        raise RuntimeError("preload: no CUDA device is available (binaries are loaded onto one)")
    device = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
    with torch.cuda.device(device):
        torch.cuda.init()
        tables = _tables.preload_tables(device)
        loaded, skipped, kernels = _warm.preload_warm()
        for kernel in kernels:  # the launch plan each kernel's first launch builds
            if kernel not in _launch._plans:
                _launch._plans[kernel] = _launch._LaunchPlan.of(kernel)
    return PreloadReport(tables, loaded, skipped, time.perf_counter() - started)
