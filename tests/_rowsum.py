"""A fake kernel for the table and compile tests: a row sum whose BLOCK needs no power of two (so a
compile error can be provoked) and must cover the bucket it serves (so a neighbour's config can be wrong
for a key)."""

import torch
import triton
import triton.language as tl

from gdn_kernels._launch import launch
from gdn_kernels._spec import Config, Constraint, KernelSpec, Param, SearchSpace, stages, warps


@triton.jit
def _rowsum_kernel(x, y, n, BLOCK: tl.constexpr):
    o_x = tl.arange(0, BLOCK)
    b_x = tl.load(x + o_x, mask=o_x < n, other=0.0)
    tl.store(y, tl.sum(b_x, axis=0))


def _rowsum_inputs(key, device, seed):
    return {"x": torch.randn(key["T"]).to(device)}


def _rowsum_launch(inputs, outputs, config):
    launch(_rowsum_kernel, (1,), config, x=inputs["x"], y=outputs["y"], n=inputs["x"].numel())


ROWSUM = KernelSpec(
    name="fake_rowsum",
    doc="row sum",
    key_fields=("dtype", "V", "T"),
    space=SearchSpace(
        params=(
            Param("BLOCK", (64, 128, 256), power_of_two=False, lo=1, hi=4096),
            warps(1, 4),
            stages(1),
        ),
        constraints=(Constraint("BLOCK covers T", lambda c, k: c["BLOCK"] >= k["T"]),),
    ),
    default=Config.of(BLOCK=4096, num_warps=4, num_stages=1),
    jit_functions=(_rowsum_kernel,),
    key_for=lambda w: ROWSUM.key(dtype=w.dtype, V=w.V, T=w.tokens),
    make_inputs=_rowsum_inputs,
    make_outputs=lambda inputs: {"y": torch.empty(1, device=inputs["x"].device)},
    launch=_rowsum_launch,
    reference=lambda inputs: {"y": inputs["x"].double().sum().reshape(1)},
)


def rowsum_key(T: int, V: int = 128):
    return ROWSUM.key(dtype="float32", V=V, T=T)
