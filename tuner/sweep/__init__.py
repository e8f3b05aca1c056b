"""The sweep: for every (kernel, key) of the chosen shapes, find the fastest correct config for a target.

1. Plan (`plan.py`): the kernels' keys for the workloads (each kernel only for the phases it serves),
   on the target `target.py` resolves (the GPU present, unless under the interpreter).
2. Open the sweep in the database. The same command again (same target, kernels and their hashes,
   keys, strategy, interpreter or not) reopens the same sweep, and every (problem, config) already
   measured is skipped: a sweep stopped by Ctrl-C, its budget, or SIGKILL continues where it stopped.
3. Compile every candidate (and the default) for the target over all CPU cores; what fails or does
   not fit the target's shared memory is recorded infeasible and never launched.
4. Measure on one worker per GPU (`schedule.py`). Each worker claims a problem in the database and
   stays with it: the default config first (the table records its time beside the winner's), then what
   the strategy asks for. Each trial is committed as it finishes. A worker with nothing to hand out
   claims the next problem, or helps the problems in progress once none is left, so no GPU idles while
   work remains. Several processes (hosts) sharing a PostgreSQL database share the problems the same way.
5. Pick: the top candidates and the default are re-timed interleaved on one worker, and the fastest of
   the top ones wins. Only a correct, deterministic trial can win (the database refuses anything else).

`run.py` runs these steps (`run_sweep`); `state.py` holds what they share within one run.

The names below are imported on first use: `gdn_tune.sweep.target` is what the command line needs
while it parses `--gpu`, and importing it must not import the database, torch or triton.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "run_sweep": "run",
    "SweepSummary": "run",
    "SweepProgress": "state",
    "plan_problems": "plan",
    "neighbour_seeds": "plan",
    "sweep_fingerprint": "plan",
    "GpuMismatchError": "target",
    "resolve_target": "target",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
