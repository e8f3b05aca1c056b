"""Run flash-linear-attention once on every ANCHORS.md case so its autotuning results land in Triton's
cache (TRITON_CACHE_DIR); later benchmark processes then start warm. Prints each case's first-call time."""

import time

import torch
from bench_kernels import DECODE_CASES, PREFILL_CASES, decode_inputs, prefill_inputs
from fla.ops import gated_delta_rule as fla

with torch.inference_mode():
    for name, H, HV, lengths in PREFILL_CASES:
        x = prefill_inputs(H, HV, lengths)
        t = time.perf_counter()
        fla.chunk_gated_delta_rule(**x)
        torch.cuda.synchronize()
        print(f"FLA first call {name}: {time.perf_counter() - t:.1f} s", flush=True)
    for N, H, HV in DECODE_CASES:
        x = decode_inputs(N, H, HV)
        t = time.perf_counter()
        fla.fused_recurrent_gated_delta_rule(**x)
        torch.cuda.synchronize()
        print(f"FLA first call decode N{N}-HV{HV}: {time.perf_counter() - t:.1f} s", flush=True)
