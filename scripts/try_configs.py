"""Time a few configs (and module-level variants) of one stage kernel on real shapes, with their errors.

Run on the GPU host, e.g.:

    python scripts/try_configs.py chunk_kkt_solve --cases dp-8k,tp8 --jobs 8 \\
        "BK=64,num_warps=4,num_stages=2" "MERGE_PRECISION=tf32;BK=64,num_warps=1,num_stages=2"

A variant is `[GLOBAL=value,...;]param=value,...`: the globals are set on the kernel's module before
its launcher runs (e.g. a constexpr it passes), the params form the config. For each case the script
checks every variant against the float64 reference on NaN-poisoned outputs, launches it twice to
check the outputs are bitwise equal, and times it by CUDA-graph replay (median). `--jobs` compiles
the variants first in that many processes on small inputs of the same specialisation, so the timed
process finds them in Triton's cache.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_kernels import time_graph

CASES = {"dp-8k": (16, 64), "tp8": (2, 8), "tp1-next": (16, 32)}
K = V = 128


def parse_variant(text: str) -> tuple[dict[str, object], dict[str, int]]:
    overrides: dict[str, object] = {}
    if ";" in text:
        head, text = text.split(";", 1)
        for item in head.split(","):
            name, value = item.split("=")
            overrides[name] = int(value) if value.lstrip("-").isdigit() else value
    params = {name: int(value) for name, value in (item.split("=") for item in text.split(","))}
    return overrides, params


@contextmanager
def variant_applied(spec, variant: str):
    """Yields the variant's Config with its module globals set; restores them afterwards."""
    from gdn_kernels import Config

    overrides, params = parse_variant(variant)
    module = importlib.import_module(spec.launch.__module__)
    saved = {name: getattr(module, name) for name in overrides}
    for name, value in overrides.items():
        setattr(module, name, value)
    try:
        yield Config.of(**params)
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def warm(kernel: str, case: str, variant: str, tokens: int) -> str:
    """Compile one variant in this process by running it on small inputs (fills Triton's cache)."""
    from gdn_kernels import Workload, spec_by_name

    spec = spec_by_name(kernel)
    H, HV = CASES[case]
    key = spec.key_for(Workload(H, HV, K, V, tokens=tokens, sequences=1))
    inputs = spec.make_inputs(key, "cuda", 0)
    with variant_applied(spec, variant) as config:
        spec.launch(inputs, spec.make_outputs(inputs), config)
    torch.cuda.synchronize()
    return variant


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kernel")
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--cases", default="dp-8k,tp8")
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=0, help="compile in this many processes first")
    parser.add_argument("--warm-only", action="store_true", help="compile (with --jobs) and stop")
    args = parser.parse_args()

    from gdn_kernels import Workload, spec_by_name
    from gdn_kernels._spec import relative_error

    spec = spec_by_name(args.kernel)
    cases = args.cases.split(",")
    if args.jobs:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            jobs = [pool.submit(warm, args.kernel, c, v, 512) for c in cases for v in args.variants]
            for job in jobs:
                try:
                    job.result()
                except Exception as e:  # reported again, with its variant, in the timed run
                    print(f"warm-up failed: {e!r}"[:300], flush=True)
    if args.warm_only:
        return 0

    rows = []
    for case in cases:
        H, HV = CASES[case]
        key = spec.key_for(Workload(H, HV, K, V, tokens=args.tokens, sequences=1))
        inputs = spec.make_inputs(key, "cuda", 0)
        reference = spec.reference(inputs)
        for variant in args.variants:
            outputs = {name: t.fill_(float("nan")) for name, t in spec.make_outputs(inputs).items()}
            try:
                with variant_applied(spec, variant) as config:
                    launch = lambda: spec.launch(inputs, outputs, config)
                    launch()
                    errors = {name: relative_error(outputs[name], ref) for name, ref in reference.items()}
                    first = {name: t.clone() for name, t in outputs.items()}
                    launch()
                    deterministic = all(torch.equal(first[n], outputs[n]) for n in reference)
                    ms = time_graph(launch, args.reps)
            except Exception as e:
                print(f"{case} {variant}: FAILED {e!r}"[:400], flush=True)
                continue
            worst = max(errors.values())
            rows.append((case, variant, ms, worst, deterministic))
            detail = " ".join(f"{n}={e:.1e}" for n, e in errors.items())
            print(f"{case:<8} {ms:8.4f} ms  {detail}  bitwise={deterministic}  {variant}", flush=True)

    print(f"\n{args.kernel}: {'case':<8} {'ms':>8} {'worst err':>9} {'bitwise':>7}  variant")
    for case, variant, ms, worst, deterministic in rows:
        print(f"{'':<{len(args.kernel) + 2}}{case:<8} {ms:8.4f} {worst:9.1e} {deterministic!s:>7}  {variant}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
