"""Calls that diverge from the warmed dtypes and flags trigger nothing like autotuning (issue 6, goal 6).

    python scripts/bench_warmup_dtypes.py [--case dp-8k] [--warm]

One process, TRITON_PRINT_AUTOTUNING=1, a fresh Triton cache (with --warm: filled first by
`gdn-tune warmup --shape <the case>`, the default call profile). `chunk_gated_delta_rule` is called as
real inference calls it (bf16 q/k/v, float32 g and beta, int32 cu_seqlens, an initial state,
output_final_state=True), then with each divergence alone: a bf16 gate g, int64 cu_seqlens,
output_final_state=False. For each call it prints:
- autotuning events: Triton's "Triton autotuning for function" lines printed during the call (must be 0:
  gdn_kernels holds no autotuner, which is checked too);
- the kernels Triton had to compile or load for the call (`triton.knobs.compilation.listener`):
  "compiled" is a real compile (a cache miss), "loaded" a variant read from the disk cache;
- `resolution_report()`: each key the call resolved and where its config came from (an exact or nearest
  table entry, or the default and why); the tables' caches are reset before each call so the report
  lists that call's keys alone.
A call the public function rejects (bf16 g: it requires float32) is reported with its message, followed
by the same call with the caller casting g to float32.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["TRITON_PRINT_AUTOTUNING"] = "1"
os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="triton-dtypes-"))
SCRIPTS = Path(__file__).resolve().parent
AUTOTUNE_MARKER = "Triton autotuning for function"


def autotuners_in(package: object) -> list[str]:
    """Every triton Autotuner reachable as a module attribute of the package (there must be none)."""
    from triton.runtime.autotuner import Autotuner

    found = []
    for name, module in list(sys.modules.items()):
        if name.startswith(package.__name__):
            found += [
                f"{name}.{attr}" for attr, value in vars(module).items() if isinstance(value, Autotuner)
            ]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="dp-8k", help="a prefill case of bench_kernels.py")
    parser.add_argument("--warm", action="store_true", help="run gdn-tune warmup for the case first")
    args = parser.parse_args()

    import torch
    import triton

    sys.path.insert(0, str(SCRIPTS))
    from bench_kernels import PREFILL_CASES, K, V, prefill_inputs

    import gdn_kernels
    from gdn_kernels import _tables

    cache_dir = os.environ["TRITON_CACHE_DIR"]
    _, H, HV, lengths = next(c for c in PREFILL_CASES if c[0] == args.case)
    if args.warm:
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        shape = f"H={H},HV={HV},K={K},V={V},T={sum(lengths)},N={len(lengths)}"
        command = [sys.executable, "-c", "from gdn_tune.cli import main; main()", "warmup", "--shape", shape]
        subprocess.run([*command, "--cache-dir", cache_dir], check=True, env=env)

    events: list[bool] = []
    triton.knobs.compilation.listener = lambda **kw: events.append(bool(kw["cache_hit"]))
    base = prefill_inputs(H, HV, lengths)
    cases = [
        ("as inference calls it", {}),
        ("bf16 gate g", {"g": base["g"].to(torch.bfloat16)}),
        ("bf16 gate g, cast by the caller", {"g": base["g"].to(torch.bfloat16).float()}),
        ("int64 cu_seqlens", {"cu_seqlens": base["cu_seqlens"].to(torch.int64)}),
        ("output_final_state=False", {"output_final_state": False}),
    ]
    print(
        f"{torch.cuda.get_device_name()}, case {args.case}, Triton cache {cache_dir} ({'warmed' if args.warm else 'empty'})"
    )
    autotuners = autotuners_in(gdn_kernels)
    print(f"autotuners in gdn_kernels: {autotuners or 'none'}")
    failed = bool(autotuners)
    with torch.inference_mode():
        for label, change in cases:
            _tables.reset()
            events.clear()
            printed = io.StringIO()
            try:
                with contextlib.redirect_stdout(printed):
                    gdn_kernels.chunk_gated_delta_rule(**(base | change))
                    torch.cuda.synchronize()
                outcome = "ran"
            except ValueError as e:
                outcome = f"rejected: {e}"
            sys.stdout.write(printed.getvalue().replace(AUTOTUNE_MARKER, "[autotune] " + AUTOTUNE_MARKER))
            autotuning = printed.getvalue().count(AUTOTUNE_MARKER)
            compiled, loaded = events.count(False), events.count(True)
            failed |= autotuning > 0
            print(
                f"\n== {label}: {outcome}; {autotuning} autotuning events, {compiled} compiled, {loaded} loaded from the disk cache"
            )
            for resolution in _tables.resolution_report():
                print(f"   {resolution.describe()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
