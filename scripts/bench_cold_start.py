"""Cold start on the GPU host: the first forward call of a fresh process with an empty Triton cache.

    python scripts/bench_cold_start.py [--cases dp-8k tp1-next tp8] [--modes fla ours ours-warm ours-bundle]
                                       [--json out.json]

For each head configuration of ANCHORS.md's cold-start rows (dp-8k 16/64, tp1-next 16/32, tp8 2/8; 8192
tokens, K = V = 128, bf16, an initial state, output_final_state=True, int32 cu_seqlens) and each mode, a
child process starts with TRITON_CACHE_DIR = a new empty folder and TRITON_PRINT_AUTOTUNING=1, builds the
inputs, then times its first `chunk_gated_delta_rule` call (to the end of the GPU work) and two more.

Modes: `fla` (flash-linear-attention 0.6, `fla` importable), `ours` (gdn_kernels, nothing warmed),
`ours-processes` and `ours-serial` (the same with GDN_KERNELS_COMPILE_AHEAD=processes, whose compiles
run in forked children, so the child's listener counts their loads, not compiles, and with =0),
`ours-warm` (gdn_kernels after `gdn-tune warmup --shape <the case>` filled that empty cache; the warmup's
own wall time is reported too), `ours-preload` (the same, and the process calls `gdn_kernels.preload()`
after building its inputs, as an engine's start-up would; its seconds are reported apart), `ours-bundle` (the empty cache and GDN_TUNE_BINARY_DIR pointing at a
bundle that `gdn-tune warmup --bundle` wrote from another cache: a fresh container with binaries baked
in). Goals (issues 6 and 13): zero autotuning events, first call ≤ 2 s without warmup and ≤ 0.05 s after
it, first-call peak memory equal to the steady state's. With $OUT set the rows also go to
$OUT/cold_start.json.

Per child it reports: first-call seconds; autotuning events (the lines "Triton autotuning for function"
Triton prints under TRITON_PRINT_AUTOTUNING=1, counted from the child's output); Triton compilations
(`triton.knobs.compilation.listener`: cache misses, i.e. real compiles, and disk-cache loads); peak GPU
memory above the inputs during the first call and during the third (torch.cuda.max_memory_allocated
after reset_peak_memory_stats).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
COLD_CASES = ("dp-8k", "tp1-next", "tp8")
AUTOTUNE_MARKER = "Triton autotuning for function"
RESULT_PREFIX = "@@cold-start "


def child(lib: str, case: str) -> None:
    """Runs in the fresh process: inputs, then the first, second and third calls, measured."""
    import torch
    import triton

    sys.path.insert(0, str(SCRIPTS))
    from bench_kernels import PREFILL_CASES, prefill_inputs

    loads = {"compiled": 0, "loaded": 0}

    def count(**event) -> None:  # Triton calls it once per kernel it compiles or loads from the disk cache
        loads["loaded" if event["cache_hit"] else "compiled"] += 1

    triton.knobs.compilation.listener = count
    started = time.perf_counter()
    if lib == "fla":
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    else:
        from gdn_kernels import chunk_gated_delta_rule
    import_s = time.perf_counter() - started

    _, H, HV, lengths = next(c for c in PREFILL_CASES if c[0] == case)
    calls = []
    preload = None
    with torch.inference_mode():
        x = prefill_inputs(H, HV, lengths)
        torch.cuda.synchronize()
        if lib == "ours-preload":  # an engine's start-up: gdn_kernels.preload() before serving
            import gdn_kernels

            t = time.perf_counter()
            report = gdn_kernels.preload()
            preload = {
                "seconds": time.perf_counter() - t,
                "binaries": report.binaries,
                "tables": report.tables,
            }
        for _ in range(3):
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            before = dict(loads)
            t = time.perf_counter()
            out = chunk_gated_delta_rule(**x)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - t
            del out
            calls.append(
                {
                    "seconds": seconds,
                    "peak_mb": (torch.cuda.max_memory_allocated() - base) / 2**20,
                    "compiled": loads["compiled"] - before["compiled"],
                    "loaded": loads["loaded"] - before["loaded"],
                }
            )
    print(RESULT_PREFIX + json.dumps({"import_s": import_s, "preload": preload, "calls": calls}), flush=True)


def run_child(lib: str, case: str, cache_dir: str, **extra_env: str) -> dict:
    env = dict(
        os.environ, TRITON_CACHE_DIR=cache_dir, TRITON_PRINT_AUTOTUNING="1", PYTHONUNBUFFERED="1", **extra_env
    )
    env.pop("TRITON_INTERPRET", None)
    done = subprocess.run(
        [sys.executable, __file__, "--child", lib, case],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    output = done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{lib} {case} failed (exit {done.returncode}):\n{output[-4000:]}")
    result = json.loads(lines[-1][len(RESULT_PREFIX) :])
    result["autotuning_events"] = output.count(AUTOTUNE_MARKER)
    return result


def warm(case: str, cache_dir: str, preset: str | None, extra: Sequence[str] = ()) -> float:
    """`gdn-tune warmup [EXTRA]` into the case's empty cache; returns its wall time."""
    sys.path.insert(0, str(SCRIPTS))
    from bench_kernels import PREFILL_CASES, K, V

    _, H, HV, lengths = next(c for c in PREFILL_CASES if c[0] == case)
    shapes = ["--preset", preset] if preset else ["--shape", f"H={H},HV={HV},K={K},V={V},T={sum(lengths)}"]
    env = dict(os.environ, TRITON_CACHE_DIR=cache_dir)
    env.pop("TRITON_INTERPRET", None)
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from gdn_tune.cli import main; main()",
            "warmup",
            *shapes,
            "--cache-dir",
            cache_dir,
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    if done.returncode != 0:
        raise RuntimeError(f"gdn-tune warmup failed:\n{done.stdout}\n{done.stderr}")
    print(done.stdout.strip().splitlines()[-1], flush=True)
    return time.perf_counter() - started


# The cold first call with its kernels compiled side by side in forked children instead of threads,
# and one after another at each launch.
COMPILE_AHEAD_MODES = {"ours-processes": "processes", "ours-serial": "0"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(COLD_CASES), choices=COLD_CASES)
    modes = ["fla", "ours", "ours-processes", "ours-serial", "ours-warm", "ours-preload", "ours-bundle"]
    parser.add_argument("--modes", nargs="+", default=modes[:3], choices=modes)
    parser.add_argument("--warmup-preset", help="warm this preset instead of the case's shape alone")
    parser.add_argument("--json", help="write every measurement here")
    parser.add_argument("--child", nargs=2, metavar=("LIB", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0

    rows = []
    for case in args.cases:
        for mode in args.modes:
            with tempfile.TemporaryDirectory(prefix="triton-cold-") as cache_dir:
                warmup_s, env = None, {}
                if mode in ("ours-warm", "ours-preload"):
                    warmup_s = warm(case, cache_dir, args.warmup_preset)
                if mode in COMPILE_AHEAD_MODES:
                    env = {"GDN_KERNELS_COMPILE_AHEAD": COMPILE_AHEAD_MODES[mode]}
                if mode == "ours-bundle":  # written from another cache, so this one stays empty
                    bundle = str(Path(cache_dir, "bundle"))
                    other = str(Path(cache_dir, "other"))
                    warmup_s = warm(case, other, args.warmup_preset, ["--bundle", bundle])
                    env = {"GDN_TUNE_BINARY_DIR": bundle, "TRITON_CACHE_DIR": str(Path(cache_dir, "fresh"))}
                result = run_child(
                    mode if mode in ("fla", "ours-preload") else "ours",
                    case,
                    env.pop("TRITON_CACHE_DIR", cache_dir),
                    **env,
                )
            row = {"case": case, "mode": mode, "warmup_s": warmup_s, **result}
            rows.append(row)
            first, steady = row["calls"][0], row["calls"][2]
            print(
                f"{case} {mode}: first call {first['seconds']:.3f} s, {row['autotuning_events']} autotuning events, "
                f"{first['compiled']} compiled, peak {first['peak_mb']:.0f} MB vs {steady['peak_mb']:.0f} MB steady",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"]).mkdir(parents=True, exist_ok=True)
        Path(os.environ["OUT"], "cold_start.json").write_text(json.dumps(rows, indent=2))

    print(
        f"\n{'case':<9} {'mode':<10} {'first s':>8} {'2nd s':>8} {'autotune':>8} {'compiled':>8} {'loaded':>7} "
        f"{'peak 1st MB':>11} {'peak 3rd MB':>11} {'extra MB':>8} {'warmup s':>8} {'preload s':>9}"
    )
    for r in rows:
        first, second, steady = r["calls"]
        warm_s = f"{r['warmup_s']:.1f}" if r["warmup_s"] is not None else "-"
        preload_s = f"{r['preload']['seconds']:.3f}" if r.get("preload") else "-"
        print(
            f"{r['case']:<9} {r['mode']:<10} {first['seconds']:>8.3f} {second['seconds']:>8.4f} "
            f"{r['autotuning_events']:>8} {first['compiled']:>8} {first['loaded']:>7} {first['peak_mb']:>11.0f} "
            f"{steady['peak_mb']:>11.0f} {first['peak_mb'] - steady['peak_mb']:>8.0f} {warm_s:>8} {preload_s:>9}"
        )
    print(
        "goals: 0 autotuning events; ours first call ≤ 2 s, ours-warm, ours-preload and ours-bundle ≤ 0.05 s;"
        " extra MB = 0"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
