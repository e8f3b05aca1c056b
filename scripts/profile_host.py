"""Where a forward call's host time goes: prefill at tp8, decode at N = 1, on the GPU host.

    python scripts/profile_host.py [--calls 200] [--no-direct] [--trace]

Prints, per case: host µs per call (perf_counter over back-to-back calls, GPU running behind), the
eager time per call as scripts/bench_kernels.py takes it (an event pair around each call), the top
functions by own time under cProfile, and with --trace the GPU kernels of one call from
torch.profiler (name, µs) to see GPU work that is not ours and gaps between launches.
`--no-direct` makes every launch go through Triton's `kernel[grid](...)` (kernels/_launch.py's direct
path off) for comparison.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_kernels import decode_inputs, prefill_inputs, time_eager


def host_us_per_call(fn, calls: int) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def top_functions(fn, calls: int, lines: int) -> str:
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(calls):
        fn()
    profile.disable()
    torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(lines)
    keep = [line for line in text.getvalue().splitlines() if line.strip()]
    return "\n".join(keep[3:])


def gpu_kernels_of_one_call(fn) -> str:
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    events.sort(key=lambda e: e.time_range.start)
    if not events:
        return "  (no GPU events recorded)"
    t0 = events[0].time_range.start
    rows = [
        f"  +{e.time_range.start - t0:8.1f} us {e.time_range.end - e.time_range.start:8.1f} us  {e.name[:70]}"
        for e in events
    ]
    span = events[-1].time_range.end - t0
    busy = sum(e.time_range.end - e.time_range.start for e in events)
    rows.append(f"  span {span:.1f} us, GPU busy {busy:.1f} us in {len(events)} kernels")
    return "\n".join(rows)


def best_us(fn, reps: int = 2000, rounds: int = 5) -> float:
    """Best over `rounds` of the mean host time of `fn` over `reps` back-to-back calls."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - start) / reps * 1e6)
    torch.cuda.synchronize()
    return best


def decode_pieces(decode: dict) -> list[str]:
    """Host µs of each step of one decode call (N = 1, HV = 64), and of Triton's own launch path."""
    from gdn_kernels import _launch, fused_recurrent
    from gdn_kernels._tables import resolve_config

    q, k, v, g, beta, h0 = (decode[n] for n in ("q", "k", "v", "g", "beta", "initial_state"))
    spec = fused_recurrent.SPEC
    config = resolve_config(spec, fused_recurrent._key(q.dtype, 16, 64, 128, 128, 1), q.device)
    o = torch.empty_like(v)
    captured: list[dict] = []
    real_launch = fused_recurrent.launch
    fused_recurrent.launch = lambda kernel, grid, config, **args: captured.append(dict(args, grid=grid))
    fused_recurrent.fused_recurrent_gated_delta_rule(**decode)
    fused_recurrent.launch = real_launch
    args = captured[0]
    grid = args.pop("grid")
    kernel = fused_recurrent._fused_recurrent_kernel
    _launch.launch(kernel, grid, config, **args)
    plan = _launch._plans[kernel]
    key = (config.params, _launch._current_device(), plan.specialisation(args))
    run, prefix, function, metadata = plan.binaries[key]
    positional = plan.positional(args)
    stream = torch.cuda.current_stream().cuda_stream
    blocks = config.block_params()
    start_event = torch.cuda.Event(enable_timing=True)
    pieces = {
        "torch.empty o [1,1,64,128] bf16": lambda: torch.empty(
            (1, 1, 64, 128), dtype=q.dtype, device=q.device
        ),
        "fused_recurrent._check": lambda: fused_recurrent._check(q, k, v, g, beta, h0, None, None, False),
        "_key + resolve_config": lambda: resolve_config(
            spec, fused_recurrent._key(q.dtype, 16, 64, 128, 128, 1), q.device
        ),
        "plan.specialisation(args)": lambda: plan.specialisation(args),
        "plan.positional(args)": lambda: plan.positional(args),
        "launcher(...) alone": lambda: run(
            grid[0], grid[1], 1, stream, function, *prefix, metadata, None, None, None, *positional
        ),
        "_launch.launch (direct)": lambda: _launch.launch(kernel, grid, config, **args),
        "kernel[grid](**args) (Triton)": lambda: kernel[grid](
            **args, **blocks, num_warps=config.num_warps, num_stages=config.num_stages
        ),
        "fused_recurrent._run": lambda: fused_recurrent._run(
            q, k, v, g, beta, o, h0, None, None, None, 128**-0.5, False, False, config
        ),
        "public call": lambda: fused_recurrent.fused_recurrent_gated_delta_rule(**decode),
        "event.record()": lambda: start_event.record(),
    }
    return [f"  {name:<36} {best_us(fn):7.2f} us" for name, fn in pieces.items()]


def prefill_pieces(tokens: int = 64) -> list[str]:
    """Host µs of each step of a prefill call at tp8 heads (H 2, HV 8) on `tokens` tokens: few enough
    that the GPU keeps up with back-to-back calls, so the loops time the host alone."""
    from gdn_kernels import _launch, _varlen, chunk, chunk_kkt_solve, chunk_output, chunk_state, chunk_wu

    x = prefill_inputs(2, 8, [tokens])
    q, k, v, g, beta, cu = (x[n] for n in ("q", "k", "v", "g", "beta", "cu_seqlens"))
    modules = (_varlen, chunk_kkt_solve, chunk_wu, chunk_state, chunk_output)
    captured: list[tuple] = []
    real_launch = _launch.launch

    def capture(kernel, grid, config, **args):
        captured.append((kernel, grid, config, args))
        real_launch(kernel, grid, config, **args)

    for module in modules:
        module.launch = capture
    chunk.chunk_gated_delta_rule(**x)
    for module in modules:
        module.launch = real_launch
    offsets, indices = _varlen.chunk_bookkeeping(cu, tokens, 64)
    gc, Ai = chunk_kkt_solve.chunk_kkt_solve(k, g, beta, cu_seqlens=cu, chunk_indices=indices)
    w, u = chunk_wu.chunk_wu(k, v, beta, gc, Ai, cu_seqlens=cu, chunk_indices=indices)
    h, v_new, _ = chunk_state.chunk_state(k, w, u, gc, x["initial_state"], True, cu, offsets)
    pieces = {
        "public call": lambda: chunk.chunk_gated_delta_rule(**x),
        "chunk._check_arguments": lambda: chunk._check_arguments(q, k, v, g, beta, x["initial_state"], cu),
        "torch.empty [1,T,8,128] bf16": lambda: torch.empty(
            (1, tokens, 8, 128), dtype=q.dtype, device=q.device
        ),
        "q.contiguous() (contiguous)": lambda: q.contiguous(),
        "_varlen.chunk_bookkeeping": lambda: _varlen.chunk_bookkeeping(cu, tokens, 64),
        "chunk_kkt_solve_unchecked()": lambda: chunk_kkt_solve.chunk_kkt_solve_unchecked(
            k, g, beta, cu, indices
        ),
        "chunk_wu_unchecked()": lambda: chunk_wu.chunk_wu_unchecked(k, v, beta, gc, Ai, cu, indices),
        "chunk_state()": lambda: chunk_state.chunk_state(k, w, u, gc, x["initial_state"], True, cu, offsets),
        "chunk_output()": lambda: chunk_output.chunk_output(
            q, k, v_new, h, gc, 0.1, cu_seqlens=cu, chunk_indices=indices
        ),
    }
    for kernel, grid, config, args in captured:
        name = getattr(kernel, "__name__", str(kernel))
        pieces[f"launch {name}"] = lambda kernel=kernel, grid=grid, config=config, args=args: _launch.launch(
            kernel, grid, config, **args
        )
    return [f"  {name:<36} {best_us(fn, reps=300):7.2f} us" for name, fn in pieces.items()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--no-direct", action="store_true", help="launch through kernel[grid] only")
    parser.add_argument("--trace", action="store_true", help="list the GPU kernels of one call")
    parser.add_argument("--profile-lines", type=int, default=18)
    parser.add_argument("--pieces", action="store_true", help="host µs of each step of a decode call")
    args = parser.parse_args()

    import gdn_kernels
    from gdn_kernels import _launch

    if args.no_direct:
        _launch._LaunchPlan.of = classmethod(lambda cls, kernel: cls(direct=False))

    prefill = prefill_inputs(2, 8, [8192])
    decode = decode_inputs(1, 16, 64)
    decode_cache = {**decode, "output_final_state": False, "inplace_final_state": True}
    decode_cache["use_qk_l2norm_in_kernel"] = True
    cases = {
        "prefill tp8": (lambda: gdn_kernels.chunk_gated_delta_rule(**prefill), args.calls // 4),
        "decode N1-HV64": (lambda: gdn_kernels.fused_recurrent_gated_delta_rule(**decode), args.calls),
        "decode N1-HV64 in-place l2norm": (
            lambda: gdn_kernels.fused_recurrent_gated_delta_rule(**decode_cache),
            args.calls,
        ),
    }
    summary = []
    with torch.inference_mode():
        if args.pieces:
            summary += [
                "decode N1-HV64, host time of each step (best of 5 × 2000 calls):",
                *decode_pieces(decode),
                "prefill tp8 heads, T 64, host time of each step (best of 5 × 300 calls):",
                *prefill_pieces(),
            ]
            print("\n".join(summary), flush=True)
        for name, (fn, calls) in cases.items():
            for _ in range(5):
                fn()
            host = host_us_per_call(fn, calls)
            eager = time_eager(fn, calls) * 1e3
            summary.append(f"{name:<32} host {host:8.1f} us/call   eager {eager:8.1f} us/call")
            print(f"\n== {name}: host {host:.1f} us/call, eager {eager:.1f} us/call", flush=True)
            print(top_functions(fn, calls, args.profile_lines), flush=True)
            if args.trace:
                print(gpu_kernels_of_one_call(fn), flush=True)
    print(f"\ndirect launch path: {'off' if args.no_direct else 'on'}")
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
