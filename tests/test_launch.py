"""kernels/_launch.py: the direct launch path must run exactly the binary Triton would pick.

The generated specialisation and argument functions are checked on the CPU; on the GPU host, one kernel is launched with arguments whose specialisation changes from call to call (pointer
alignment, an integer equal to 1 or divisible by 16, dtype), each result checked.
"""

import pytest
import torch
import triton
import triton.language as tl
from triton.backends.compiler import BaseBackend
from triton.runtime.jit import JITFunction

from gdn_kernels import _launch
from gdn_kernels._spec import Config


def _scaled_copy(x, y, n, scale, BLOCK: tl.constexpr, HALF: tl.constexpr = False):
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = o < n
    b_x = tl.load(x + o, mask=m, other=0.0).to(tl.float32) * scale
    if HALF:
        b_x = b_x * 0.5
    tl.store(y + o, b_x.to(y.dtype.element_ty), mask=m)


_scaled_copy_kernel = triton.jit(_scaled_copy)


def test_plan_of_a_jit_function_orders_arguments_as_the_kernel():
    plan = _launch._LaunchPlan.of(JITFunction(_scaled_copy), backend=BaseBackend)
    x, y = torch.zeros(4), torch.zeros(4)
    args = {"y": y, "x": x, "scale": 2.0, "n": 4}
    # Constexpr slots are None (the launcher skips them); a default fills an argument not passed.
    assert plan.positional(args) == (x, y, 4, 2.0, None, None)
    assert plan.specialisation(args) == (
        ("*fp32", "D"),
        ("*fp32", "D"),
        ("i32", ""),
        ("fp32", None),
        None,
        False,
    )
    # Each thing Triton specialises on changes the key: n == 1, n % 16, alignment, dtype, a constexpr.
    variants = [
        {**args, "n": 1},
        {**args, "n": 16},
        {**args, "x": torch.zeros(8)[1:]},
        {**args, "y": torch.zeros(4, dtype=torch.bfloat16)},
        {**args, "HALF": True},
    ]
    keys = {plan.specialisation(a) for a in [args, *variants]}
    assert len(keys) == 1 + len(variants)
    # What Triton does not specialise on leaves the key alone: another float, another aligned tensor.
    assert plan.specialisation({**args, "scale": 3.0, "x": torch.ones(16)}) == plan.specialisation(args)


def test_interpreted_kernels_never_take_the_direct_path():
    if torch.cuda.is_available():
        pytest.skip("the interpreter only runs without CUDA")
    assert not _launch._LaunchPlan.of(_scaled_copy_kernel).direct


CALLS = [
    # (dtype, offset into the buffers in elements, n, HALF)
    (torch.float32, 0, 33, False),
    (torch.float32, 1, 33, False),  # 4-byte aligned pointers
    (torch.float32, 0, 1, False),  # n == 1 becomes a constexpr
    (torch.float32, 0, 32, False),  # n divisible by 16
    (torch.bfloat16, 0, 33, False),
    (torch.float32, 0, 33, True),  # another constexpr value
    (torch.float32, 3, 32, False),
    (torch.float32, 0, 33, False),  # the first specialisation again
    (torch.float32, 1, 33, False),
]


def test_launches_with_changing_specialisations_are_each_correct(device):
    config = Config.of(BLOCK=64, num_warps=1, num_stages=1)
    for dtype, offset, n, half in CALLS:
        source = torch.randn(128, device=device).to(dtype)
        target = torch.full((128,), float("nan"), device=device, dtype=dtype)
        x, y = source[offset : offset + n], target[offset : offset + n]
        # Powers of two: exact in every dtype, so no rounding mode can make results differ.
        _launch.launch(_scaled_copy_kernel, (1,), config, x=x, y=y, n=n, scale=4.0, HALF=half)
        expected = x * (2.0 if half else 4.0)
        assert torch.equal(y, expected), (dtype, offset, n, half)
        assert target[:offset].isnan().all() and target[offset + n :].isnan().all()
    if torch.cuda.is_available():
        # One compiled binary per distinct specialisation, each found again by the direct path.
        assert len(_launch._plans[_scaled_copy_kernel].binaries) == 7


def test_recording_still_captures_instead_of_running(device):
    config = Config.of(BLOCK=64, num_warps=1, num_stages=1)
    x = torch.randn(8, device=device)
    y = torch.full((8,), float("nan"), device=device)
    with _launch.recording() as records:
        _launch.launch(_scaled_copy_kernel, (1,), config, x=x, y=y, n=8, scale=1.0)
    assert y.isnan().all()
    assert len(records) == 1 and records[0].args["BLOCK"] == 64 and records[0].num_warps == 1
