"""Names the CLI needs while it parses a command line, in a module that imports nothing: the modules
they describe import SQLAlchemy, torch and triton (about 3 s), which `gdn-tune --help` must not wait for.
"""

from __future__ import annotations

DEFAULT_DB_URL = "sqlite:///gdn_tune.db"

# What a sweep under the interpreter records as its GPU: a valid device name (tables check it), and
# how a table's made_with tells CPU wall-clock times from GPU timings when it has no `interpret` field.
INTERPRETER_GPU_NAME = "TRITON_INTERPRET CPU"

# Columns of `gdn-tune trials --parquet`, in order, with what each holds (the command's help and
# docs/sweep.md list them from here).
TRIAL_COLUMNS: dict[str, str] = {
    "sweep_id": "id of the sweep (gdn-tune status)",
    "target": "GPU target swept (h200, b200, ...)",
    "gpu_name": "name of the GPU that ran the trial",
    "interpret": "true when run under the Triton interpreter (times are CPU wall clock)",
    "kernel": "kernel name",
    "kernel_hash": "hash of the kernel's source and search space",
    "key": "lookup key, JSON object in the kernel's field order",
    "config": "config, JSON object sorted by parameter",
    "is_default": "the config is the kernel's default",
    "is_winner": "the config won its problem",
    "status": "ok, infeasible, wrong, crashed or timeout",
    "median_ms": "median time per launch, ms (ok trials)",
    "min_ms": "fastest repetition, ms",
    "max_ms": "slowest repetition, ms",
    "spread_ms": "interquartile range of the repetitions, ms",
    "repetitions": "timed repetitions",
    "retimed_ms": "median of the interleaved re-timing before the pick, ms (top candidates and default)",
    "rel_error": "worst relative L2 error against the float64 reference",
    "compile_seconds": "time to compile for the target before any launch, s",
    "shared_bytes": "shared memory the compiled kernel needs, bytes",
    "error": "why it failed (compile error, reference mismatch, signal, timeout)",
    "finished_at": "when the trial was committed (UTC)",
    "worker": "process and GPU that measured it, host:pid:tag/gpuN (cpuN under the interpreter)",
}
