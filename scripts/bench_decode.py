"""Decode kernel on the GPU host: state bandwidth of every config in the search space, and host overhead.

    python scripts/bench_decode.py [--sequences 1 32 256] [--heads 16/64 2/8] [--json out.json]

For each (sequences, H/HV) it times every candidate config of the "fused_recurrent" spec with CUDA-graph
replays (triton.testing.do_bench_cudagraph) on a serving-style call (state cache with shuffled slots,
in-kernel l2norm, final state written in place) and prints the state bytes moved per second against the
H200's ~4.3 TB/s copy bandwidth (ANCHORS.md), best first; then the eager cost of one public call at one
sequence: back-to-back calls, so the time per call is the host's launch path when the kernel is short.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from triton.testing import do_bench_cudagraph

from gdn_kernels import fused_recurrent_gated_delta_rule
from gdn_kernels.fused_recurrent import SPEC, _run

COPY_BANDWIDTH = 4.3e12  # bytes/s read + written, H200 device-to-device copy (ANCHORS.md)
K = V = 128


def serving_call(N: int, H: int, HV: int) -> dict:
    """One token per sequence; states in a cache of 2N slots, gathered by index, updated in place."""
    q = torch.randn(1, N, H, K, device="cuda", dtype=torch.bfloat16)
    slots = 2 * N
    return {
        "q": q,
        "k": torch.randn_like(q),
        "v": torch.randn(1, N, HV, V, device="cuda", dtype=torch.bfloat16),
        "g": torch.nn.functional.logsigmoid(torch.randn(1, N, HV, device="cuda")),
        "beta": torch.rand(1, N, HV, device="cuda"),
        "initial_state": 0.1 * torch.randn(slots, HV, K, V, device="cuda"),
        "cu_seqlens": torch.arange(N + 1, device="cuda", dtype=torch.int32),
        "ssm_state_indices": torch.randperm(slots, device="cuda")[:N].to(torch.int32),
        "use_qk_l2norm_in_kernel": True,
        "inplace_final_state": True,
    }


def time_config(x: dict, config) -> float:
    """Median ms of one launch with `config`, replayed from a CUDA graph."""
    o = torch.empty_like(x["v"])

    def launch():
        _run(
            x["q"], x["k"], x["v"], x["g"], x["beta"], o, x["initial_state"], x["initial_state"],
            x["cu_seqlens"], x["ssm_state_indices"], K**-0.5, True, True, config,
        )  # fmt: skip

    launch()
    return do_bench_cudagraph(launch, rep=200, return_mode="median")


def eager_call_us(x: dict, calls: int = 2000) -> float:
    for _ in range(50):
        fused_recurrent_gated_delta_rule(**x)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fused_recurrent_gated_delta_rule(**x)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--heads", nargs="+", default=["16/64", "2/8"], help="H/HV pairs")
    parser.add_argument("--json", help="write every measurement here")
    args = parser.parse_args()
    print(f"{torch.cuda.get_device_name()}, default config {SPEC.default.label}")
    results = []
    for heads in args.heads:
        H, HV = map(int, heads.split("/"))
        for N in args.sequences:
            x = serving_call(N, H, HV)
            key = SPEC.key(dtype="bfloat16", H=H, HV=HV, K=K, V=V, N=N)
            state_bytes = SPEC.bytes_moved(key) * N // key["N"]
            rows = []
            for config in SPEC.space.candidates(key):
                ms = time_config(x, config)
                rows.append((ms, config))
                results.append({"N": N, "H": H, "HV": HV, "config": config.as_dict(), "ms": ms})
            rows.sort(key=lambda r: r[0])
            default_ms = next(ms for ms, c in rows if c == SPEC.default)
            print(f"\nN={N} H={H} HV={HV}: state {state_bytes / 1e6:.1f} MB read + written")
            print(f"{'config':<36} {'µs':>8} {'TB/s':>6} {'of copy':>8}")
            shown = rows[:8] + [(ms, c) for ms, c in rows[8:] if c == SPEC.default]
            for ms, config in shown:
                tbs = state_bytes / (ms * 1e-3) / 1e12
                tag = " (default)" if config == SPEC.default else ""
                print(
                    f"{config.label + tag:<36} {ms * 1e3:8.1f} {tbs:6.2f} {tbs * 1e12 / COPY_BANDWIDTH:8.0%}"
                )
            print(f"best/default: {default_ms / rows[0][0]:.2f}x faster than the default")
    host = eager_call_us(serving_call(1, 16, 64))
    print(f"\neager public call, N=1 H=16 HV=64, back to back: {host:.1f} µs per call")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"configs": results, "eager_call_us": host}, f, indent=1)


if __name__ == "__main__":
    main()
