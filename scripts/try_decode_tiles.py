"""Experiment: does walking several state tiles per program bring the bf16 [V, K] gated decode closer to
copy bandwidth? On the GPU host:

    python scripts/try_decode_tiles.py [--N 256] [--HV 64] [--H 16]

A prototype of the gated one-token decode (vLLM's: gates from a, b, A_log, dt_bias; l2norm of q, k;
state cache bf16 [slots, HV, V, K] read from and written back to shuffled slots) in which each program
walks NB tiles of BV state rows one after another (grid N·HV × V/(BV·NB)), against the package's kernel
at its table config and at every config of its search space, all by CUDA-graph replay on the same
inputs. Prints ms and % of copy bandwidth (state bytes read + written). The prototype's outputs are
checked against the package kernel's.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_kernels import copy_bandwidth, rel_err, time_graph


@triton.jit
def _decode_tiles_kernel(q, k, v, a, b, A_log, dt_bias, o, state, slots, scale,
                         H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                         BV: tl.constexpr, NB: tl.constexpr):  # fmt: skip
    i_nh, i_p = tl.program_id(0), tl.program_id(1)
    i_n, i_hv = i_nh // HV, i_nh % HV
    i_h = i_hv // (HV // H)
    i_slot = tl.load(slots + i_n).to(tl.int64)
    if i_slot < 0:
        return
    o_k = tl.arange(0, K)
    b_q = tl.load(q + (i_n * H + i_h) * K + o_k).to(tl.float32)
    b_k = tl.load(k + (i_n * H + i_h) * K + o_k).to(tl.float32)
    b_q = b_q * tl.rsqrt(tl.sum(b_q * b_q) + 1e-6) * scale
    b_k = b_k * tl.rsqrt(tl.sum(b_k * b_k) + 1e-6)
    b_x = tl.load(a + i_n * HV + i_hv).to(tl.float32) + tl.load(dt_bias + i_hv)
    b_g = -tl.exp(tl.load(A_log + i_hv)) * tl.where(b_x <= 20.0, tl.log(1.0 + tl.exp(b_x)), b_x)
    b_beta = tl.sigmoid(tl.load(b + i_n * HV + i_hv).to(tl.float32))
    p_state = state + (i_slot * HV + i_hv) * V * K
    for i_b in range(NB):
        o_v = (i_p * NB + i_b) * BV + tl.arange(0, BV)
        # [BK, BV] tile of the [V, K] state: K contiguous.
        b_h = tl.load(p_state + o_v[None, :] * K + o_k[:, None]).to(tl.float32)
        b_v = tl.load(v + (i_n * HV + i_hv) * V + o_v).to(tl.float32)
        b_h *= tl.exp(b_g)
        b_v = b_beta * (b_v - tl.sum(b_h * b_k[:, None], axis=0))
        b_h += b_k[:, None] * b_v[None, :]
        tl.store(o + (i_n * HV + i_hv) * V + o_v, tl.sum(b_h * b_q[:, None], axis=0).to(o.dtype.element_ty))
        tl.store(p_state + o_v[None, :] * K + o_k[:, None], b_h.to(state.dtype.element_ty))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--N", type=int, default=256)
    parser.add_argument("--HV", type=int, default=64)
    parser.add_argument("--H", type=int, default=16)
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--proto-only", action="store_true", help="leave the package's configs out")
    parser.add_argument("--stages", default="1", help="num_stages of the prototype's tile loop, e.g. 1,2,3")
    parser.add_argument("--min-tile-rows", type=int, default=8, help="only prototypes with BV·NB ≥ this")
    args = parser.parse_args()
    from gdn_kernels._tables import resolve_config
    from gdn_kernels.fused_recurrent import SPACE, SPEC_GATED

    N, H, HV, K, V = args.N, args.H, args.HV, 128, 128
    key = SPEC_GATED.key(dtype="bfloat16", H=H, HV=HV, K=K, V=V, N=N, state_dtype="bfloat16",
                         state_layout="vk")  # fmt: skip
    inputs = SPEC_GATED.make_inputs(key, "cuda", 0)
    state_bytes = 2 * N * HV * K * V * 2
    bw = copy_bandwidth()
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s; state bytes {state_bytes / 1e6:.1f} MB -> floor "
          f"{state_bytes / bw * 1e3:.4f} ms")  # fmt: skip

    def package(config):
        outputs = SPEC_GATED.make_outputs(inputs)
        return (lambda: SPEC_GATED.launch(inputs, outputs, config)), outputs

    def proto(BV, NB, warps, stages):
        cache = inputs["initial_state"].clone()
        out = torch.empty(N, HV, V, device="cuda", dtype=torch.bfloat16)
        slots = inputs["ssm_state_indices"]

        def call():
            _decode_tiles_kernel[(N * HV, V // (BV * NB))](
                inputs["q"], inputs["k"], inputs["v"], inputs["g"], inputs["beta"], inputs["A_log"],
                inputs["dt_bias"], out, cache, slots, K**-0.5, H=H, HV=HV, K=K, V=V, BV=BV, NB=NB,
                num_warps=warps, num_stages=stages,
            )  # fmt: skip

        return call, cache, out, slots

    table = resolve_config(SPEC_GATED, key, torch.device("cuda"))
    fn, ref = package(table)
    fn()
    torch.cuda.synchronize()
    ref = {name: t.clone() for name, t in ref.items() if isinstance(t, torch.Tensor)}
    print("package outputs:", {name: tuple(t.shape) for name, t in ref.items()})
    floor = state_bytes / bw * 1e3
    rows = []

    def record(name: str, ms: float) -> None:
        rows.append((name, ms))
        print(f"  {ms:8.4f} ms {100 * floor / ms:5.1f} %  {name}", flush=True)

    record(f"package table {table.label}", time_graph(fn, args.reps))
    stage_counts = [int(x) for x in args.stages.split(",")]
    for BV, NB, warps, stages in itertools.product(
        (8, 16, 32, 64), (1, 2, 4, 8, 16), (1, 2, 4), stage_counts
    ):
        if BV * NB > V or not 32 * warps <= K * BV <= 128 * 32 * warps:  # the package's register bounds
            continue
        tile_rows = BV * NB
        if tile_rows < args.min_tile_rows or (stages > 1 and NB == 1):  # stages pipeline the tile loop
            continue
        fn, cache, out, slots = proto(BV, NB, warps, stages)
        fn()
        torch.cuda.synchronize()
        o_ref = ref.get("o", ref.get("out"))
        err = max(rel_err(out, o_ref.reshape(out.shape)), rel_err(cache[slots.long()], ref["final_state"]))
        record(f"proto BV{BV} NB{NB} w{warps} s{stages} (err {err:.1e})", time_graph(fn, args.reps))
    for config in [] if args.proto_only else SPACE.candidates(key):
        if config.num_stages == 2:  # one token: 1 and 3 stages bracket it
            continue
        fn, _ = package(config)
        record(f"package {config.label}", time_graph(fn, args.reps))
    print("sorted:")
    for name, ms in sorted(rows, key=lambda r: r[1]):
        print(f"{ms:8.4f} ms {100 * floor / ms:5.1f} %  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
