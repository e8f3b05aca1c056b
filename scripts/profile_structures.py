"""GPU time per kernel of a spec's configs on real shapes: where a structure (segments, fused or split)
spends its time. On the GPU host:

    python scripts/profile_structures.py chunk_fused --shape H=2,HV=8,T=8192,N=1 \\
        "FUSED=0,SEG=1,BV=64,num_warps=4,num_stages=2" "FUSED=0,SEG=8,BV=64,num_warps=8,num_stages=3"

For each shape (K = V = 128, bf16, float32 [K, V] state unless given) and config: CUDA-graph replay
time of one launch (median), then one eager launch under torch.profiler summed by kernel.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_kernels import time_graph
from gpu_stages import kernel_breakdown


def _fields(text: str) -> dict[str, object]:
    fields = dict(item.split("=") for item in text.split(","))
    return {name: int(value) if value.isdigit() else value for name, value in fields.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kernel")
    parser.add_argument("configs", nargs="+", help="param=value,... per config")
    parser.add_argument(
        "--shape", action="append", required=True, help="key fields, e.g. H=2,HV=8,T=8192,N=1"
    )
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    from gdn_kernels import Config, spec_by_name

    spec = spec_by_name(args.kernel)
    base = dict(dtype="bfloat16", K=128, V=128, state_dtype="float32", state_layout="kv")
    for shape in args.shape:
        key = spec.key(**{**base, **_fields(shape)})
        inputs = spec.make_inputs(key, "cuda", 0)
        print(f"== {key.label}")
        for text in args.configs:
            config = Config.of(**{name: int(value) for name, value in _fields(text).items()})
            problems = spec.space.problems(config, key)
            if problems:
                print(f"  {config.label}: not valid here ({'; '.join(problems)})")
                continue
            outputs = spec.make_outputs(inputs)

            def call(outputs=outputs, config=config):
                spec.launch(inputs, outputs, config)

            ms = time_graph(call, args.reps)
            breakdown = kernel_breakdown(call)
            parts = ", ".join(f"{k['kernel']} {k['ms']:.4f}" for k in breakdown["kernels"])
            print(f"  {config.label}: graph {ms:.4f} ms | profiled {breakdown['total_ms']:.4f} ms: {parts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
