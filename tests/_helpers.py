"""Pieces the kernel tests share: packed sequence offsets, NaN-poisoned launches, default configs
compiled for every target, and a guard against host synchronisation on the GPU host."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
import torch

from gdn_kernels._registry import spec_by_name
from gdn_kernels._spec import Config, KernelSpec
from gdn_kernels._targets import TARGETS
from gdn_tune.storage import Storage, SweepStatus
from gdn_tune.trial_result import Measurement, TrialStatus

# made_with of tables the tests write: an H200's, as the shipped sm90 tables record it.
MADE_WITH = {
    "gpu": "NVIDIA H200",
    "compute_capability": "9.0",
    "triton": "3.6.0",
    "torch": "2.13.0",
    "cuda": "12.8",
    "date": "2026-01-31",
}


def cu_seqlens_of(lengths: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
    """int32 [N + 1] start offsets of sequences of `lengths` packed along T, then the total."""
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)


def dtype_name(dtype: torch.dtype) -> str:
    """`bfloat16` for torch.bfloat16: the dtype as test ids and keys spell it."""
    return str(dtype).removeprefix("torch.")


def launch_poisoned(spec: KernelSpec, inputs: dict, config: Config | None = None) -> dict[str, torch.Tensor]:
    """Launch through the spec on outputs filled with NaN first, so an element left unwritten fails a check."""
    outputs = {name: t.fill_(float("nan")) for name, t in spec.make_outputs(inputs).items()}
    spec.launch(inputs, outputs, config or spec.default)
    return outputs


# Run in a child process without TRITON_INTERPRET: the interpreter's kernels cannot be compiled.
_COMPILE_DEFAULT = """
import json, sys
from gdn_kernels._launch import compile_for_target, recording
from gdn_kernels._registry import spec_by_name
from gdn_kernels._targets import TARGETS
spec = spec_by_name(sys.argv[1])
key = spec.key(**json.loads(sys.argv[2]))
inputs = spec.make_inputs(key, "meta", 0)
assert all(t.device.type == "meta" for t in inputs.values() if hasattr(t, "device"))
with recording() as launches:
    spec.launch(inputs, spec.make_outputs(inputs), spec.default)
targets = {t.cc: t for t in TARGETS.values()}.values()
print(json.dumps({t.name: [compile_for_target(r, t.cc).metadata.shared for r in launches] for t in targets}))
"""


def default_config_shared_memory(kernel: str, **key_fields: int | str) -> dict[str, list[int]]:
    """Shared bytes of each launch of the kernel's default config at the key, compiled for one target
    of each compute capability (named by target)."""
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", _COMPILE_DEFAULT, kernel, json.dumps(key_fields)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


# The tuner's command line in a child process (its own environment, its own Triton).
CLI = [sys.executable, "-c", "from gdn_tune.cli import main; main()"]


def compiled_env(**extra: str) -> dict[str, str]:
    """The environment of a process that compiles for the GPU: no interpreter, no table override."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "GDN_TUNE_CONFIG_DIR")}
    return env | extra


def run_reporting(code: str, cache: Path, timeout: int = 300, cwd: Path | None = None, **env: str) -> dict:
    """Run `code` in a fresh compiling process (in folder `cwd`) on Triton cache `cache`; its last line
    is JSON."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=compiled_env(TRITON_CACHE_DIR=str(cache), **env),
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def warmup_cli(*args: str, **env: str) -> dict:
    """`gdn-tune warmup ARGS --json` in a compiling process; its JSON report."""
    done = subprocess.run(
        [*CLI, "warmup", *args, "--json"],
        capture_output=True,
        text=True,
        env=compiled_env(**env),
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def assert_default_config_fits_every_target(kernel: str, **key_fields: int | str) -> None:
    """The default config compiles for every compute capability, in one launch that fits the shared
    memory of the target it was compiled for."""
    shared = default_config_shared_memory(kernel, **key_fields)
    assert set(shared) == {t.name for t in {t.cc: t for t in TARGETS.values()}.values()}
    for name, needs in shared.items():
        assert len(needs) == 1 and needs[0] <= TARGETS[name].shared_memory_per_block, (name, needs)


@contextmanager
def host_synchronisation_forbidden() -> Iterator[None]:
    """Within the block any host synchronisation raises (torch's sync debug mode); the GPU's queue is
    drained before, so the block starts from an idle device."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


# --------------------------------------------------------------------------------------------------
# Sweeps written straight into a database (no trials run), for export and the commands that read it.

GATING = spec_by_name("gdn_gating")
KEY = GATING.key(dtype="bfloat16", HV=2, T=128)
OTHER_KEY = GATING.key(dtype="bfloat16", HV=2, T=64)
INTERPRETER = "TRITON_INTERPRET CPU"  # the GPU name an --interpret sweep records


def record_sweep(
    storage: Storage,
    fingerprint: str,
    gpu_name: str,
    key=KEY,
    kernel_hash: str | None = None,
    block: int = 256,
    time_ms: float = 0.01,
) -> None:
    """A finished sweep of gdn_gating with one winner on `gpu_name` (INTERPRETER: an --interpret sweep)."""
    interpret = gpu_name == INTERPRETER
    sweep, _ = storage.open_sweep(
        fingerprint,
        target="h200",
        gpu_name=gpu_name,
        compute_capability="9.0",
        triton_version="3.6.0",
        torch_version="2.13.0",
        cuda_version=None if interpret else "12.8",
        interpret=interpret,
        strategy="grid",
        command="test",
    )
    problem = storage.ensure_problem(
        sweep.id, "gdn_gating", key, kernel_hash or GATING.source_hash(), GATING.default
    )
    config = Config.of(BLOCK=block, num_warps=4, num_stages=1)
    trial = storage.record_trial(problem.id, config, Measurement(TrialStatus.OK, median_ms=time_ms))
    storage.set_winner(problem.id, trial.id, time_ms, 2 * time_ms)
    storage.close_sweep(sweep.id, SweepStatus.FINISHED)


def execute_sql(url: str, sql: str, **params) -> list[tuple]:
    """The rows `sql` returns from the database at `url` (none for a statement), in its own connection."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            result = connection.execute(sa.text(sql), params)
            return [tuple(r) for r in result] if result.returns_rows else []
    finally:
        engine.dispose()
