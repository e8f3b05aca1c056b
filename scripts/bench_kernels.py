"""Forward-pass timings of gdn_kernels against flash-linear-attention, on the cases of ANCHORS.md.

Run on the GPU host, FLA installed beside (the package itself never imports it):

    python scripts/bench_kernels.py [--out results.json] [--reps 50]

Prints one table per section with times and ratios (FLA time / ours: above 1 means we are faster).
Both libraries run in the same process on the same inputs, warmed up first (FLA autotunes on its first
call per shape; that cost is excluded here and measured by scripts/bench_cold_start.py).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys

import torch
import torch.nn.functional as F

# (name, H, HV, sequence lengths): ANCHORS.md prefill cases, K = V = 128.
PREFILL_CASES = [
    ("dp-8k", 16, 64, [8192]),
    ("dp-4seq", 16, 64, [1000, 3000, 4096, 96]),
    ("tp1-next", 16, 32, [8192]),
    ("tp8", 2, 8, [8192]),
    ("dp-32k", 16, 64, [32768]),
    ("dp-64x128", 16, 64, [128] * 64),
]
# (sequences, H, HV): ANCHORS.md decode cases, one token per sequence.
DECODE_CASES = [(1, 16, 64), (32, 16, 64), (256, 16, 64), (256, 2, 8)]
K = V = 128


def prefill_inputs(H: int, HV: int, lengths: list[int], device: str = "cuda") -> dict:
    T, N = sum(lengths), len(lengths)
    q = torch.randn(1, T, H, K, device=device, dtype=torch.bfloat16)
    k = F.normalize(torch.randn(1, T, H, K, device=device, dtype=torch.float32), dim=-1).to(torch.bfloat16)
    v = torch.randn(1, T, HV, V, device=device, dtype=torch.bfloat16)
    g = F.logsigmoid(torch.randn(1, T, HV, device=device, dtype=torch.float32))
    beta = torch.randn(1, T, HV, device=device, dtype=torch.float32).sigmoid()
    h0 = torch.randn(N, HV, K, V, device=device, dtype=torch.float32) * 0.1
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=device, dtype=torch.int32)
    return dict(q=q, k=k, v=v, g=g, beta=beta, initial_state=h0, output_final_state=True, cu_seqlens=cu)


def decode_inputs(N: int, H: int, HV: int, device: str = "cuda") -> dict:
    q = torch.randn(N, 1, H, K, device=device, dtype=torch.bfloat16)
    k = F.normalize(torch.randn(N, 1, H, K, device=device, dtype=torch.float32), dim=-1).to(torch.bfloat16)
    v = torch.randn(N, 1, HV, V, device=device, dtype=torch.bfloat16)
    g = F.logsigmoid(torch.randn(N, 1, HV, device=device, dtype=torch.float32))
    beta = torch.randn(N, 1, HV, device=device, dtype=torch.float32).sigmoid()
    h0 = torch.randn(N, HV, K, V, device=device, dtype=torch.float32) * 0.1
    return dict(q=q, k=k, v=v, g=g, beta=beta, initial_state=h0, output_final_state=True)


def time_eager(fn, reps: int, warmup: int = 5) -> float:
    """Median milliseconds of one call, each call bracketed by its own event pair (host work included)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def time_graph(fn, reps: int) -> float:
    """Median milliseconds of one call replayed from a CUDA graph (no host work)."""
    fn()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return time_eager(graph.replay, reps)


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus written."""
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = time_eager(lambda: dst.copy_(src), 20)
    return 2 * src.numel() / (ms * 1e-3)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)).item()


def bench_stage_kernels(reps: int) -> list[dict]:
    """Each tunable kernel alone with its default config, on the dp-8k and tp8 shapes."""
    from gdn_kernels import Workload, kernel_specs

    rows = []
    for case, H, HV in (("dp-8k", 16, 64), ("tp8", 2, 8)):
        for spec in kernel_specs().values():
            if "prefill" not in spec.phases:
                continue
            key = spec.key_for(Workload(H, HV, K, V, tokens=8192, sequences=1))
            inputs = spec.make_inputs(key, "cuda", 0)
            outputs = spec.make_outputs(inputs)
            ms = time_graph(lambda: spec.launch(inputs, outputs, spec.default), reps)
            rows.append({"case": case, "kernel": spec.name, "config": spec.default.label, "ms": ms})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--no-fla", action="store_true", help="time gdn_kernels alone")
    parser.add_argument("--only", choices=("prefill", "decode", "stages"), help="run one section")
    args = parser.parse_args()

    import gdn_kernels as ours

    fla = None
    if not args.no_fla:
        from fla.ops import gated_delta_rule as fla

    torch.manual_seed(0)
    results: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    import triton

    results["triton"] = triton.__version__
    bandwidth = copy_bandwidth()
    results["copy_bandwidth_TBps"] = bandwidth / 1e12

    sections = {args.only} if args.only else {"prefill", "decode", "stages"}
    with torch.inference_mode():
        prefill = []
        for name, H, HV, lengths in PREFILL_CASES if "prefill" in sections else ():
            x = prefill_inputs(H, HV, lengths)
            row = {
                "case": name,
                "ours_ms": time_eager(lambda x=x: ours.chunk_gated_delta_rule(**x), args.reps),
            }
            o, s = ours.chunk_gated_delta_rule(**x)
            if fla is not None:
                row["fla_ms"] = time_eager(lambda x=x: fla.chunk_gated_delta_rule(**x), args.reps)
                o_ref, s_ref = fla.chunk_gated_delta_rule(**x)
                row["o_vs_fla"] = rel_err(o, o_ref)
                row["state_vs_fla"] = rel_err(s, s_ref)
            prefill.append(row)
            print(row, flush=True)
        results["prefill"] = prefill

        decode = []
        for N, H, HV in DECODE_CASES if "decode" in sections else ():
            x = decode_inputs(N, H, HV)
            state_bytes = 2 * N * HV * K * V * 4
            row = {
                "case": f"N{N}-HV{HV}",
                "ours_eager_ms": time_eager(
                    lambda x=x: ours.fused_recurrent_gated_delta_rule(**x), args.reps
                ),
                "ours_graph_ms": time_graph(
                    lambda x=x: ours.fused_recurrent_gated_delta_rule(**x), args.reps
                ),
            }
            row["ours_bw_frac"] = state_bytes / (row["ours_graph_ms"] * 1e-3) / bandwidth
            if fla is not None:
                row["fla_eager_ms"] = time_eager(
                    lambda x=x: fla.fused_recurrent_gated_delta_rule(**x), args.reps
                )
                row["fla_graph_ms"] = time_graph(
                    lambda x=x: fla.fused_recurrent_gated_delta_rule(**x), args.reps
                )
                row["fla_bw_frac"] = state_bytes / (row["fla_graph_ms"] * 1e-3) / bandwidth
                o, _ = ours.fused_recurrent_gated_delta_rule(**x)
                o_ref, _ = fla.fused_recurrent_gated_delta_rule(**x)
                row["o_vs_fla"] = rel_err(o, o_ref)
            decode.append(row)
            print(row, flush=True)
        results["decode"] = decode
        results["stages"] = bench_stage_kernels(args.reps) if "stages" in sections else []

    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)

    print(
        f"\n{results['device']}, torch {results['torch']}, triton {results['triton']}, "
        f"copy {results['copy_bandwidth_TBps']:.2f} TB/s"
    )
    print(f"\n{'prefill case':<12} {'ours ms':>9} {'FLA ms':>9} {'FLA/ours':>9} {'o err':>9}")
    ratios = []
    for r in results["prefill"]:
        fla_ms = r.get("fla_ms", math.nan)
        ratios.append(fla_ms / r["ours_ms"])
        print(
            f"{r['case']:<12} {r['ours_ms']:>9.3f} {fla_ms:>9.3f} {ratios[-1]:>9.2f} {r.get('o_vs_fla', math.nan):>9.1e}"
        )
    if fla is not None and ratios:
        print(f"geometric mean FLA/ours: {math.exp(sum(map(math.log, ratios)) / len(ratios)):.2f}")
    print(
        f"\n{'decode case':<12} {'ours eager':>10} {'FLA eager':>10} {'ours graph':>10} {'FLA graph':>10} "
        f"{'ours %bw':>8} {'FLA %bw':>8}"
    )
    for r in results["decode"]:
        print(
            f"{r['case']:<12} {r['ours_eager_ms'] * 1e3:>8.1f}us {r.get('fla_eager_ms', math.nan) * 1e3:>8.1f}us "
            f"{r['ours_graph_ms'] * 1e3:>8.1f}us {r.get('fla_graph_ms', math.nan) * 1e3:>8.1f}us "
            f"{100 * r['ours_bw_frac']:>7.0f}% {100 * r.get('fla_bw_frac', math.nan):>7.0f}%"
        )
    print(f"\n{'stage kernel (default config)':<32} {'case':<7} {'ms':>8}")
    for r in results["stages"]:
        print(f"{r['kernel'] + ' ' + r['config']:<32} {r['case']:<7} {r['ms']:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
