"""A fake kernel whose configs fail in every way a sweep must survive, injected with
GDN_TUNE_EXTRA_SPECS=_fake_kernels:SPECS (this folder on the path).

y = 2·x over a float32 vector; the config's BLOCK picks the fault:
  16   fails to compile (a static assert), so it must be recorded infeasible and never launched
  32   aborts its worker process (as an illegal address or a failed device assert does)
  64   hangs (as a kernel with a bad loop bound does)
  128  returns wrong values
  1024 is not deterministic: every run differs in the last bits, within tolerance but not bitwise
  256, 512 are correct; the default is 512.
The faults fire only on real tensors: the compile check launches on "meta" tensors and must survive.

TIMED_SPECS: kernels whose speed the config decides, not the machine (for sweeps that share work among
workers and processes, whose winners must not depend on which worker timed what). Each launch sleeps
a time set by the config, so the fastest config of each problem is known in advance (`timed_winner`).
"""

from __future__ import annotations

import itertools
import os
import resource
import time

import torch
import triton
import triton.language as tl

from gdn_kernels import Config, KernelSpec, Key
from gdn_kernels._launch import launch
from gdn_kernels._spec import Param, SearchSpace, stages, token_bucket, warps

COMPILE_FAIL, ABORT, HANG, WRONG, UNSTABLE = 16, 32, 64, 128, 1024
GOOD = (256, 512)
EXPECTED_STATUS = {
    COMPILE_FAIL: "infeasible",
    ABORT: "crashed",
    HANG: "timeout",
    WRONG: "wrong",
    UNSTABLE: "wrong",
    **dict.fromkeys(GOOD, "ok"),
}

SPACE = SearchSpace(
    params=(Param("BLOCK", (16, 32, 64, 128, 256, 512, 1024)), warps(1), stages(1)),
)


@triton.jit
def _double_kernel(x, y, n, scale, offset, BLOCK: tl.constexpr):
    tl.static_assert(BLOCK != 16, "BLOCK 16 is rejected at compile time (injected fault)")
    o_x = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m_x = o_x < n
    tl.store(y + o_x, tl.load(x + o_x, mask=m_x) * scale + offset, mask=m_x)


_calls = itertools.count(1)


def _launch(inputs: dict, outputs: dict, config: Config) -> None:
    x = inputs["x"]
    block = config["BLOCK"]
    real = x.device.type != "meta"
    if real and block == ABORT:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file in the test's folder
        os.abort()
    if real and block == HANG:
        time.sleep(3600)
    scale = 3.0 if block == WRONG else 2.0
    # Alternates 1e-7 and 2e-7: far inside the tolerance, but two runs in a row never match bitwise.
    offset = (next(_calls) % 2 + 1) * 1e-7 if block == UNSTABLE else 0.0
    launch(
        _double_kernel,
        (triton.cdiv(x.numel(), block),),
        config,
        x=x,
        y=outputs["y"],
        n=x.numel(),
        scale=scale,
        offset=offset,
    )


def _make_inputs(key: Key, device, seed: int) -> dict:
    gen = torch.Generator("cpu").manual_seed(seed)
    return {"x": torch.randn(key["T"], generator=gen).to(device)}


SPEC = KernelSpec(
    name="fake_faults",
    doc="y = 2x with injected faults",
    key_fields=("T",),
    space=SPACE,
    default=Config.of(BLOCK=512, num_warps=1, num_stages=1),
    jit_functions=(_double_kernel,),
    key_for=lambda w: SPEC.key(T=token_bucket(w.tokens)),
    make_inputs=_make_inputs,
    make_outputs=lambda inputs: {"y": torch.empty_like(inputs["x"])},
    launch=_launch,
    reference=lambda inputs: {"y": 2 * inputs["x"].to(torch.float64)},
    tolerance=1e-5,
    phases=("prefill",),
)
SPECS = (SPEC,)


TIMED_BLOCKS = (128, 256, 512, 1024)
# Sleep of a launch by the config's rank: 10, 30, 50, 70 ms. Steps of 20 ms stay ordered through the
# wake-up delays of a loaded two-core machine (a few ms), even in a median of two re-timing rounds.
TIMED_BASE_MS, TIMED_STEP_MS = 10.0, 20.0


def _timed_rank(spec_index: int, T: int, block: int) -> int:
    # Each spec and key puts a different block first, so a winner copied across problems shows.
    return (TIMED_BLOCKS.index(block) + spec_index + (T == 64)) % len(TIMED_BLOCKS)


def timed_winner(spec_index: int, T: int) -> int:
    """The BLOCK that wins the problem (spec `fake_timed_<spec_index>`, key T)."""
    return next(b for b in TIMED_BLOCKS if _timed_rank(spec_index, T, b) == 0)


def _timed_spec(spec_index: int) -> KernelSpec:
    def launch_timed(inputs: dict, outputs: dict, config: Config) -> None:
        x = inputs["x"]
        if x.device.type != "meta":
            rank = _timed_rank(spec_index, x.numel(), config["BLOCK"])
            time.sleep((TIMED_BASE_MS + TIMED_STEP_MS * rank) / 1e3)
        grid = (triton.cdiv(x.numel(), config["BLOCK"]),)
        launch(_double_kernel, grid, config, x=x, y=outputs["y"], n=x.numel(), scale=2.0, offset=0.0)

    spec = KernelSpec(
        name=f"fake_timed_{spec_index}",
        doc="y = 2x, sleeping a time set by the config",
        key_fields=("T",),
        space=SearchSpace(params=(Param("BLOCK", TIMED_BLOCKS), warps(1), stages(1))),
        default=Config.of(BLOCK=512, num_warps=1, num_stages=1),
        jit_functions=(_double_kernel,),
        key_for=lambda w: spec.key(T=token_bucket(w.tokens)),  # smoke preset: T 128 and T 64
        make_inputs=_make_inputs,
        make_outputs=lambda inputs: {"y": torch.empty_like(inputs["x"])},
        launch=launch_timed,
        reference=lambda inputs: {"y": 2 * inputs["x"].to(torch.float64)},
        tolerance=1e-5,
        phases=("prefill", "decode"),
    )
    return spec


TIMED_SPECS = tuple(_timed_spec(i) for i in range(4))
