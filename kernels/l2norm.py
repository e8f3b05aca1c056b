"""L2 normalisation over the last dimension: y = x / sqrt(Σx² + eps), same dtype as x.

GDN normalises q and k per head (rows of K = 64..256 elements) before the delta rule. Each program
holds a tile of whole rows in registers, sums the squares in float32 and scales the row once: one read
and one write of x, nothing else.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import cdiv, launch
from ._spec import Config, KernelSpec, Key, Param, SearchSpace, pow2_ceil, randn, stages, token_bucket, warps
from ._tables import resolve_config
from .reference import l2norm_reference

# A row is one register tile: past 8192 float32 elements a 4-warp program needs 64+ registers per
# thread for the row alone and spills. GDN rows are 64..256 elements.
MAX_ROW = 8192

SPACE = SearchSpace(
    params=(
        # Elements per program (whole rows: rows per program = BLOCK // pow2(D), at least one). Below 512 a
        # program moves under 1 KiB of bf16 and launch cost dominates; past 8192 registers spill.
        Param("BLOCK", (512, 1024, 2048, 4096, 8192), "elements per program", lo=128, hi=16384),
        warps(1, 2, 4, 8),
        stages(1, why="no loop to pipeline"),
    ),
)
# 16 rows of 128 per program, 16 fp32 registers per thread at 4 warps; valid for every D ≤ MAX_ROW.
DEFAULT = Config.of(BLOCK=2048, num_warps=4, num_stages=1)


@triton.jit
def _l2norm_kernel(
    x,
    y,
    rows,
    eps,
    D: tl.constexpr,
    BD: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # BLOCK is the tuned knob; ROWS = max(1, BLOCK // BD) is derived from it by the launcher.
    o_r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    o_d = tl.arange(0, BD)
    m_x = (o_r[:, None] < rows) & (o_d[None, :] < D)
    p_x = o_r[:, None] * D + o_d[None, :]
    b_x = tl.load(x + p_x, mask=m_x, other=0.0).to(tl.float32)
    b_inv = tl.rsqrt(tl.sum(b_x * b_x, axis=1) + eps)
    tl.store(y + p_x, (b_x * b_inv[:, None]).to(y.dtype.element_ty), mask=m_x)


def _key(dtype: torch.dtype | str, D: int, rows: int) -> Key:
    # "T" is the bucket of rows (tokens × heads): the grid size, and the field tables interpolate over.
    return SPEC.memoised_key(dtype, D, token_bucket(rows))


def _launch_l2norm(inputs: dict, outputs: dict, config: Config) -> None:
    x = inputs["x"]
    D = x.shape[-1]
    rows = x.numel() // D if D else 0
    BD = pow2_ceil(D)
    rows_per_program = max(1, config["BLOCK"] // BD)
    launch(
        _l2norm_kernel,
        (cdiv(rows, rows_per_program),),
        config,
        x=x,
        y=outputs["y"],
        rows=rows,
        eps=float(inputs.get("eps", 1e-6)),
        D=D,
        BD=BD,
        ROWS=rows_per_program,
    )


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(sum(x²) + eps) over the last dimension; any leading shape, same dtype as x."""
    if not x.is_floating_point() or x.dim() == 0:
        raise ValueError(
            f"l2norm: x must be a floating-point tensor with at least one dim, got {x.dtype} {tuple(x.shape)}"
        )
    D = x.shape[-1]
    if not 1 <= D <= MAX_ROW:
        raise ValueError(f"l2norm: x's last dim must be in 1..{MAX_ROW}, got {D}")
    if not eps > 0:
        raise ValueError(f"l2norm: eps must be positive, got {eps}")
    inputs = {"x": x.contiguous(), "eps": eps}
    outputs = _make_outputs(inputs)
    if x.numel():
        _launch_l2norm(inputs, outputs, resolve_config(SPEC, _key(x.dtype, D, x.numel() // D), x.device))
    return outputs["y"]


def _reference(inputs: dict) -> dict[str, torch.Tensor]:
    return {"y": l2norm_reference(inputs["x"], float(inputs.get("eps", 1e-6)))}


def _make_inputs(key: Key, device: torch.device | str, seed: int) -> dict:
    gen = torch.Generator("cpu").manual_seed(seed)
    x = randn(key["T"], key["D"], generator=gen, device=device).to(getattr(torch, key["dtype"]))
    return {"x": x.to(device), "eps": 1e-6}


def _make_outputs(inputs: dict) -> dict[str, torch.Tensor]:
    return {"y": torch.empty_like(inputs["x"])}


SPEC = KernelSpec(
    name="l2norm",
    doc=__doc__.splitlines()[0],
    key_fields=("dtype", "D", "T"),
    space=SPACE,
    default=DEFAULT,
    jit_functions=(_l2norm_kernel,),
    # The prefill path normalises q and k: tokens × H rows of K each.
    key_for=lambda w: _key(w.dtype, w.K, w.tokens * w.H),
    make_inputs=_make_inputs,
    make_outputs=_make_outputs,
    launch=_launch_l2norm,
    reference=_reference,
    bytes_moved=lambda key: 2 * key["T"] * key["D"] * getattr(torch, key["dtype"]).itemsize,
)
SPECS = (SPEC,)
