"""Where a process's first forward call spends its time (cProfile, cumulative), e.g. with a warm Triton
cache: run it twice with the same TRITON_CACHE_DIR and read the second run.

    python scripts/profile_first_call.py [--case dp-8k] [--top 30]
"""

import argparse
import cProfile
import pstats
import time

import torch
from bench_kernels import PREFILL_CASES, prefill_inputs

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--case", default="dp-8k", choices=[c[0] for c in PREFILL_CASES])
parser.add_argument("--top", type=int, default=30)
args = parser.parse_args()

_, H, HV, lengths = next(c for c in PREFILL_CASES if c[0] == args.case)
x = prefill_inputs(H, HV, lengths)
torch.cuda.synchronize()
profile = cProfile.Profile()
start = time.perf_counter()
profile.enable()
import gdn_kernels  # noqa: E402  (the import is part of what a first call costs)

with torch.inference_mode():
    gdn_kernels.chunk_gated_delta_rule(**x)
torch.cuda.synchronize()
profile.disable()
print(f"import + first call: {time.perf_counter() - start:.3f} s")
pstats.Stats(profile).sort_stats("cumulative").print_stats(args.top)
