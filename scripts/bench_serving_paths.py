"""The serving engines' GDN paths on real shapes, against flash-linear-attention in the same run.

Run on the GPU host, FLA installed beside (the package itself never imports it):

    python scripts/bench_serving_paths.py [--out results.json] [--reps 50]

K = V = 128. Each row: CUDA-graph replay (GPU time) and eager call (host work included) in ms, ours
and FLA's nearest call; for decode the share of copy bandwidth the state bytes reach (graph time).
FLA 0.6 has no [V, K] or 16-bit cache, no gates in its decode kernel and no slot indices in
prefill: its row runs the same recurrence with a float32 [K, V] state of the same sequences
(gates precomputed), so FLA moves more state bytes there; the bandwidth column is what to compare.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F
from bench_kernels import copy_bandwidth, rel_err, time_eager, time_graph

K = V = 128


def gates(T: int, HV: int, device: str = "cuda") -> dict:
    """Raw a, b (bf16, as the projection gives them) and A_log, dt_bias of one layer."""
    return {
        "a": torch.randn(T, HV, device=device, dtype=torch.bfloat16),
        "b": torch.randn(T, HV, device=device, dtype=torch.bfloat16),
        "A_log": torch.log(1 + 15 * torch.rand(HV, device=device)),
        "dt_bias": 0.5 * torch.randn(HV, device=device),
    }


def gates_precomputed(x: dict) -> tuple[torch.Tensor, torch.Tensor]:
    g = -x["A_log"].exp() * F.softplus(x["a"].float() + x["dt_bias"])
    return g, x["b"].float().sigmoid()


def decode_case(N: int, H: int, HV: int, padded: int, state_dtype, S: int = 1) -> dict:
    """N sequences of S tokens on a cache of 2·N·S + 1 slots [slots, HV, V, K]; `padded` of them are
    CUDA-graph padding (slot -1)."""
    T = N * S
    slots = 2 * T + 1
    x = gates(T, HV)
    x["mixed"] = torch.randn(T, 2 * H * K + HV * V, device="cuda", dtype=torch.bfloat16)
    x["cache"] = (0.1 * torch.randn(slots, HV, V, K, device="cuda")).to(state_dtype)
    order = torch.randperm(slots - 1, device="cuda")[:T].to(torch.int32) + 1
    indices = order.view(N, S) if S > 1 else order
    if padded:
        indices[N - padded :] = -1
    x["indices"] = indices
    x["accepted"] = torch.randint(1, S + 1, (N,), device="cuda", dtype=torch.int32)
    x["cu_seqlens"] = torch.arange(0, T + 1, S, device="cuda", dtype=torch.int32)
    x["H"], x["HV"], x["N"], x["S"] = H, HV, N, S
    return x


def qkv_views(x: dict, B: int, T: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    H, HV, mixed = x["H"], x["HV"], x["mixed"]
    q = mixed[:, : H * K].unflatten(1, (H, K)).view(B, T, H, K)
    k = mixed[:, H * K : 2 * H * K].unflatten(1, (H, K)).view(B, T, H, K)
    v = mixed[:, 2 * H * K :].unflatten(1, (HV, V)).view(B, T, HV, V)
    return q, k, v


def ours_decode(x: dict, packed: bool):
    import gdn_kernels as ours

    N, S = x["N"], x["S"]
    B, T = (N, 1) if S == 1 else (1, N * S)
    q, k, v = qkv_views(x, B, T)
    if not packed:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    extra = {"num_accepted_tokens": x["accepted"], "cu_seqlens": x["cu_seqlens"]} if S > 1 else {}
    a, b = x["a"].view(B, T, -1), x["b"].view(B, T, -1)
    return lambda: ours.fused_recurrent_gated_delta_rule(
        q, k, v, a, b,
        initial_state=x["cache"], ssm_state_indices=x["indices"], inplace_final_state=True,
        use_qk_l2norm_in_kernel=True, state_layout="vk", use_gate_in_kernel=True, A_log=x["A_log"],
        dt_bias=x["dt_bias"], use_beta_sigmoid_in_kernel=True, **extra,
    )  # fmt: skip


def fla_decode(fla, x: dict):
    """FLA's decode of the same sequences: float32 [N, HV, K, V] states gathered, gates precomputed."""
    N, S = x["N"], x["S"]
    B, T = (N, 1) if S == 1 else (1, N * S)
    q, k, v = (t.contiguous() for t in qkv_views(x, B, T))
    g, beta = gates_precomputed(x)
    h0 = torch.randn(N, x["HV"], K, V, device="cuda") * 0.1
    cu = x["cu_seqlens"] if S > 1 else None
    return lambda: fla.fused_recurrent_gated_delta_rule(
        q, k, v, g.view(B, T, -1), beta.view(B, T, -1),
        initial_state=h0, output_final_state=True, cu_seqlens=cu, use_qk_l2norm_in_kernel=True,
    )  # fmt: skip


def prefill_case(H: int, HV: int, lengths: list[int], state_dtype) -> dict:
    T, N = sum(lengths), len(lengths)
    x = {
        "q": torch.randn(1, T, H, K, device="cuda", dtype=torch.bfloat16),
        "k": F.normalize(torch.randn(1, T, H, K, device="cuda"), dim=-1).to(torch.bfloat16),
        "v": torch.randn(1, T, HV, V, device="cuda", dtype=torch.bfloat16),
        "g": F.logsigmoid(torch.randn(1, T, HV, device="cuda")),
        "beta": torch.randn(1, T, HV, device="cuda").sigmoid(),
        "cu_seqlens": torch.tensor(
            [0, *torch.tensor(lengths).cumsum(0).tolist()], device="cuda", dtype=torch.int32
        ),
    }
    x["pool"] = (0.1 * torch.randn(2 * N + 1, HV, V, K, device="cuda")).to(state_dtype)
    x["indices"] = torch.randperm(2 * N, device="cuda")[:N].to(torch.int32) + 1
    return x


def ours_prefill(x: dict):
    import gdn_kernels as ours

    args = {n: x[n] for n in ("q", "k", "v", "g", "beta", "cu_seqlens")}
    return lambda: ours.chunk_gated_delta_rule(
        **args,
        initial_state=x["pool"],
        state_indices=x["indices"],
        inplace_final_state=True,
        state_layout="vk",
    )


def fla_prefill(fla, x: dict):
    args = {n: x[n] for n in ("q", "k", "v", "g", "beta", "cu_seqlens")}
    h0 = torch.randn(x["indices"].numel(), x["v"].shape[2], K, V, device="cuda") * 0.1
    return lambda: fla.chunk_gated_delta_rule(**args, initial_state=h0, output_final_state=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--no-fla", action="store_true", help="time gdn_kernels alone")
    args = parser.parse_args()
    fla = None
    if not args.no_fla:
        from fla.ops import gated_delta_rule as fla

    torch.manual_seed(0)
    bandwidth = copy_bandwidth()
    bf16, f32 = torch.bfloat16, torch.float32
    decode_cases = [
        # (name, N, H, HV, padded, state dtype, S, packed)
        ("gated bf16 256x64 pad16", 256, 16, 64, 16, bf16, 1, False),
        ("gated bf16 256x32 pad16", 256, 16, 32, 16, bf16, 1, False),
        ("gated f32 256x64 pad16", 256, 16, 64, 16, f32, 1, False),
        ("packed bf16 256x64 pad16", 256, 16, 64, 16, bf16, 1, True),
        ("packed bf16 1x64", 1, 16, 64, 0, bf16, 1, True),
        ("spec bf16 64x4 HV64", 64, 16, 64, 0, bf16, 4, False),
        ("spec bf16 64x4 HV32", 64, 16, 32, 0, bf16, 4, False),
    ]
    rows = []
    with torch.inference_mode():
        for name, N, H, HV, padded, state_dtype, S, packed in decode_cases:
            x = decode_case(N, H, HV, padded, state_dtype, S)
            fn = ours_decode(x, packed)
            live = N - padded
            itemsize = x["cache"].element_size()
            state_bytes = (1 + S) * live * HV * K * V * itemsize  # one read, S written per sequence
            row = {
                "case": name,
                "ours_graph_ms": time_graph(fn, args.reps),
                "ours_eager_ms": time_eager(fn, args.reps),
            }
            row["ours_bw"] = state_bytes / (row["ours_graph_ms"] * 1e-3) / bandwidth
            if fla is not None:
                ref = fla_decode(fla, x)
                row["fla_graph_ms"] = time_graph(ref, args.reps)
                row["fla_eager_ms"] = time_eager(ref, args.reps)
                fla_bytes = 2 * N * HV * K * V * 4
                row["fla_bw"] = fla_bytes / (row["fla_graph_ms"] * 1e-3) / bandwidth
            rows.append(row)
            print(row, flush=True)
        for name, H, HV, lengths, state_dtype in (
            ("prefill pool bf16 vk 16/64 4seq", 16, 64, [1000, 3000, 4096, 96], bf16),
            ("prefill pool f32 vk 16/32 8k", 16, 32, [8192], f32),
        ):
            x = prefill_case(H, HV, lengths, state_dtype)
            fn = ours_prefill(x)
            row = {
                "case": name,
                "ours_graph_ms": time_graph(fn, args.reps),
                "ours_eager_ms": time_eager(fn, args.reps),
            }
            if fla is not None:
                ref = fla_prefill(fla, x)
                row["fla_graph_ms"] = time_graph(ref, args.reps)
                row["fla_eager_ms"] = time_eager(ref, args.reps)
                # Same numbers on the same start states: ours on the pool's rows, FLA on their float32 copy.
                start = x["pool"][x["indices"].long()].transpose(-1, -2).float()
                o_ref, _ = fla.chunk_gated_delta_rule(
                    **{n: x[n] for n in ("q", "k", "v", "g", "beta", "cu_seqlens")}, initial_state=start
                )
                import gdn_kernels as ours

                o, _ = ours.chunk_gated_delta_rule(
                    **{n: x[n] for n in ("q", "k", "v", "g", "beta", "cu_seqlens")},
                    initial_state=x["pool"].clone(),
                    state_indices=x["indices"],
                    state_layout="vk",
                )
                row["o_vs_fla"] = rel_err(o, o_ref)
            rows.append(row)
            print(row, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"copy_bandwidth_TBps": bandwidth / 1e12, "rows": rows}, f, indent=2)
    nan = float("nan")
    print(f"\n{torch.cuda.get_device_name()}, copy {bandwidth / 1e12:.2f} TB/s; ms, ratio = FLA / ours")
    print(
        f"{'case':<34} {'ours graph':>10} {'FLA graph':>10} {'ratio':>6} {'ours eager':>10} {'FLA eager':>10} {'ratio':>6} {'ours %bw':>8} {'FLA %bw':>8}"
    )
    for r in rows:
        fg, fe = r.get("fla_graph_ms", nan), r.get("fla_eager_ms", nan)
        print(
            f"{r['case']:<34} {r['ours_graph_ms']:>10.4f} {fg:>10.4f} {fg / r['ours_graph_ms']:>6.2f} "
            f"{r['ours_eager_ms']:>10.4f} {fe:>10.4f} {fe / r['ours_eager_ms']:>6.2f} "
            f"{100 * r.get('ours_bw', nan):>7.0f}% {100 * r.get('fla_bw', nan):>7.0f}%"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
