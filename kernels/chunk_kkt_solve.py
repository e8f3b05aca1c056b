"""Chunk-local cumsum of g fused with Ai = (I + A)⁻¹, A_ij = β_i (k_i·k_j) exp(gc_i − gc_j) for i > j.

One program per (chunk of BT = 64 tokens, value head). It writes gc (the inclusive cumsum of g within
the chunk, float32) once, and Ai row by row in k's dtype; A itself never leaves registers.

The solve works on 16×16 blocks, indices 0..3 along the chunk:
1. A is built block-wise: the ten blocks A_ij, i ≥ j, each a 16×16 `tl.dot` of two 16-row slices of
   k, accumulated over K in slices of BK, then scaled by β_i exp(gc_i − gc_j).
2. The four diagonal blocks are inverted by forward substitution (15 rank-1 updates of a 16×16 tile
   each; the four chains are independent, so they interleave).
3. The off-diagonal blocks follow from Ai_ij = −Ai_ii · Σ_{j≤m<i} A_im · Ai_mj, sub-diagonal by
   sub-diagonal, as 16 float32 `tl.dot`s of 16×16 tiles on the tensor cores in tf32 (see
   MERGE_PRECISION).

Every tile has 16 rows, one warp's MMA: the kernel runs best on one warp (H200, dp-8k: 0.111 ms at
1 warp, 0.223 at 2, 0.443 at 4, where extra warps replicate the same tiles).

Ai is stored in k's dtype, as FLA does. Measured against float64 (T 1024, H 2, HV 4, K = V = 128,
bf16, rounding as the GPU does): Ai itself is off by 8e-5 relative L2, and w, u computed from bf16 Ai
are off by 1.67e-3 / 1.66e-3 where float32 Ai gives 1.67e-3 / 1.66e-3: the bf16 rounding of w and u
themselves dominates. Float32 Ai would add 67 MB of writes and as many reads to every dp-8k call
(T 8192, HV 64: 8192·64·64·2 bytes), 31 µs at 4.3 TB/s.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _varlen
from ._launch import INTERPRETED, cdiv, launch
from ._spec import (
    CHUNK_SIZE,
    Config,
    Constraint,
    KernelSpec,
    Key,
    Param,
    SearchSpace,
    pow2_ceil,
    randn,
    stages,
    token_bucket,
    warps,
)
from ._tables import resolve_config
from .reference import chunk_stages_reference

SPACE = SearchSpace(
    params=(
        # K slice of the k·kᵀ product; each step loads four [16, BK] slices of k. 16 is tl.dot's minimum.
        Param("BK", (16, 32, 64, 128), "K slice of the k·kᵀ product", lo=16, hi=256),
        # 16-row MMA tiles cannot be split across warps, so extra warps replicate the work. With tf32
        # merges ptxas (sm90, dp-8k) needs 218 registers at 1 warp and spills nothing.
        warps(1, 2, 4, 8),
        # K/BK is 1..8 steps; ptxas output is identical for 1 and 2 stages at K = 128.
        stages(1, 2, 3, why="pipelines the k loads of the K loop"),
    ),
    constraints=(
        # A slice wider than K only loads masked zeros.
        Constraint(
            "BK ≤ K rounded up to a power of two", lambda c, key: c["BK"] <= max(16, pow2_ceil(int(key["K"])))
        ),
    ),
)
# H200, CUDA-graph median (scripts/try_configs.py): dp-8k 0.111 ms (BK 32: 0.113, BK 128: 0.134,
# 1 stage: 0.145, 3 stages: 0.111), tp8 0.020 ms; 4.5 KB of shared memory on sm90.
DEFAULT = Config.of(BK=64, num_warps=1, num_stages=2)

# Products of the off-diagonal merge. "ieee" runs fp32 FMA loops and spills at 1 warp (828 bytes per
# thread): dp-8k 0.258 ms at its best (2 warps) against 0.111 in tf32. tf32 rounds the operands to
# 10 mantissa bits, below the 8 of the bf16 Ai written: relative L2 error of Ai against float64 is
# 5.1e-5 either way at dp-8k and tp8 (H200), and in a float64 simulation with strongly correlated
# unit keys (mean k_i·k_j 0.92, β = 1, no decay) 1.3e-3 against 8.7e-4 for ieee, both before the
# bf16 rounding of Ai. "tf32x3" (fp32-accurate, 3 products) costs 0.149 ms.
MERGE_PRECISION = "tf32"

# Triton's interpreter (TRITON_INTERPRET=1, the CPU tests) has two bf16 gaps: tl.dot multiplies the
# raw bit patterns (triton#11584), and float32 → bf16 truncates instead of rounding to nearest,
# which doubles the error of every bf16 output. Under it, dot operands are widened to float32 (exact
# for bf16 and fp16 values, so products match the GPU's 16-bit MMA with float32 accumulation) and
# bf16 rounding is done on the bits. Compiled kernels never take these branches: the interpreter and
# triton.compile do not run in one process.


@triton.jit
def _rounded(b_x, dtype: tl.constexpr, INTERPRETED: tl.constexpr):
    """b_x (float32) rounded to nearest-even in `dtype`, as the GPU converts."""
    if INTERPRETED and dtype == tl.bfloat16:
        b_bits = b_x.to(tl.uint32, bitcast=True)
        b_bits = (b_bits + 0x7FFF + ((b_bits >> 16) & 1)) & 0xFFFF0000
        b_x = b_bits.to(tl.float32, bitcast=True)
    return b_x.to(dtype)


@triton.jit
def _dot_operand(b_x, INTERPRETED: tl.constexpr):
    """b_x as a tl.dot operand: unchanged on the GPU, widened to float32 under the interpreter."""
    if INTERPRETED:
        b_x = b_x.to(tl.float32)
    return b_x


@triton.jit
def _invert_unit_lower_16(b_D, o_i):
    """(I + D)⁻¹ for a strictly lower 16×16 tile D, by forward substitution, column by column.

    After step j, row j of the result is final; every later row i subtracts D_ij times it.
    """
    b_X = (o_i[:, None] == o_i[None, :]).to(tl.float32)
    for j in range(15):
        b_xj = tl.sum(tl.where(o_i[:, None] == j, b_X, 0.0), 0)  # row j of X
        b_dj = tl.sum(tl.where(o_i[None, :] == j, b_D, 0.0), 1)  # column j of D (zero above row j)
        b_X -= b_dj[:, None] * b_xj[None, :]
    return b_X


@triton.jit
def _load_k_slice(
    p_k, r: tl.constexpr, o_i, L, o_k, HK: tl.constexpr, K: tl.constexpr, INTERPRETED: tl.constexpr
):
    """Rows 16r..16r+15 of the chunk's k, columns o_k; zeros past the chunk's end or K."""
    m = ((r * 16 + o_i) < L)[:, None] & (o_k < K)[None, :]
    b_k = tl.load(p_k + (r * 16 + o_i)[:, None] * HK + o_k[None, :], mask=m, other=0.0)
    return _dot_operand(b_k, INTERPRETED)


@triton.jit
def _store_block(
    p_Ai, b_x, o_i, L, r: tl.constexpr, c: tl.constexpr, HVBT: tl.constexpr, INTERPRETED: tl.constexpr
):
    """Store block (r, c) of the chunk's 64×64 Ai; rows past the chunk's end are not written."""
    p = p_Ai + (r * 16 + o_i)[:, None] * HVBT + (c * 16 + o_i)[None, :]
    tl.store(p, _rounded(b_x, p_Ai.dtype.element_ty, INTERPRETED), mask=((r * 16 + o_i) < L)[:, None])


@triton.jit
def _chunk_kkt_solve_kernel(
    k,
    g,
    beta,
    gc,
    Ai,
    cu_seqlens,
    chunk_indices,
    T,
    BHV,
    H: tl.constexpr,
    HV: tl.constexpr,
    K: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    MERGE_PRECISION: tl.constexpr,
    INTERPRETED: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    # One flat grid, value heads fastest: the HV/H value heads that share a key head run side by
    # side and read the same k rows from L2. (A 2-D grid would cap chunks at 65535, 4.2M tokens.)
    i_c, i_bhv = tl.program_id(0) // BHV, tl.program_id(0) % BHV
    i_b, i_hv = i_bhv // HV, i_bhv % HV
    i_h = i_hv // (HV // H)
    if IS_VARLEN:
        i_n = tl.load(chunk_indices + i_c * 2)
        i_c = tl.load(chunk_indices + i_c * 2 + 1)
        if i_n < 0:
            return
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    else:
        bos = i_b.to(tl.int64) * T
        eos = bos + T
    t0 = bos + i_c * BT
    L = tl.minimum(eos - t0, BT).to(tl.int32)  # tokens in this chunk; a sequence's last may be short
    # Scalar int64 bases (token · HV · K passes 2³¹ past 262k tokens at HV 64, K 128); offsets
    # inside the chunk fit int32, which keeps per-element address math at 32 bits.
    p_k = k + (t0 * H + i_h) * K
    p_g, p_beta, p_gc = g + t0 * HV + i_hv, beta + t0 * HV + i_hv, gc + t0 * HV + i_hv
    p_Ai = Ai + (t0 * HV + i_hv) * BT

    o_i = tl.arange(0, 16)
    # Rows of the four 16-row slices inside the chunk; past its end k = 0 and β = 0 load, which
    # makes those rows and columns of A zero.
    m_0, m_1, m_2, m_3 = o_i < L, o_i + 16 < L, o_i + 32 < L, o_i + 48 < L

    # gc: cumsum of each slice plus the last value of the slice before it.
    b_g0 = tl.cumsum(tl.load(p_g + o_i * HV, mask=m_0, other=0.0), 0)
    b_g1 = tl.cumsum(tl.load(p_g + (o_i + 16) * HV, mask=m_1, other=0.0), 0) + tl.sum(
        tl.where(o_i == 15, b_g0, 0.0), 0
    )
    b_g2 = tl.cumsum(tl.load(p_g + (o_i + 32) * HV, mask=m_2, other=0.0), 0) + tl.sum(
        tl.where(o_i == 15, b_g1, 0.0), 0
    )
    b_g3 = tl.cumsum(tl.load(p_g + (o_i + 48) * HV, mask=m_3, other=0.0), 0) + tl.sum(
        tl.where(o_i == 15, b_g2, 0.0), 0
    )
    tl.store(p_gc + o_i * HV, b_g0, mask=m_0)
    tl.store(p_gc + (o_i + 16) * HV, b_g1, mask=m_1)
    tl.store(p_gc + (o_i + 32) * HV, b_g2, mask=m_2)
    tl.store(p_gc + (o_i + 48) * HV, b_g3, mask=m_3)

    # k·kᵀ, the ten blocks on and below the diagonal.
    b_A00 = tl.zeros([16, 16], dtype=tl.float32)
    b_A10 = tl.zeros([16, 16], dtype=tl.float32)
    b_A11 = tl.zeros([16, 16], dtype=tl.float32)
    b_A20 = tl.zeros([16, 16], dtype=tl.float32)
    b_A21 = tl.zeros([16, 16], dtype=tl.float32)
    b_A22 = tl.zeros([16, 16], dtype=tl.float32)
    b_A30 = tl.zeros([16, 16], dtype=tl.float32)
    b_A31 = tl.zeros([16, 16], dtype=tl.float32)
    b_A32 = tl.zeros([16, 16], dtype=tl.float32)
    b_A33 = tl.zeros([16, 16], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        b_k0 = _load_k_slice(p_k, 0, o_i, L, o_k, H * K, K, INTERPRETED)
        b_k1 = _load_k_slice(p_k, 1, o_i, L, o_k, H * K, K, INTERPRETED)
        b_k2 = _load_k_slice(p_k, 2, o_i, L, o_k, H * K, K, INTERPRETED)
        b_k3 = _load_k_slice(p_k, 3, o_i, L, o_k, H * K, K, INTERPRETED)
        b_A00 = tl.dot(b_k0, tl.trans(b_k0), b_A00)
        b_A10 = tl.dot(b_k1, tl.trans(b_k0), b_A10)
        b_A11 = tl.dot(b_k1, tl.trans(b_k1), b_A11)
        b_A20 = tl.dot(b_k2, tl.trans(b_k0), b_A20)
        b_A21 = tl.dot(b_k2, tl.trans(b_k1), b_A21)
        b_A22 = tl.dot(b_k2, tl.trans(b_k2), b_A22)
        b_A30 = tl.dot(b_k3, tl.trans(b_k0), b_A30)
        b_A31 = tl.dot(b_k3, tl.trans(b_k1), b_A31)
        b_A32 = tl.dot(b_k3, tl.trans(b_k2), b_A32)
        b_A33 = tl.dot(b_k3, tl.trans(b_k3), b_A33)

    # Scale rows by β_i exp(gc_i) and columns by exp(−gc_j), as one exp of the difference: for
    # i > j it is exp of a sum of log-decays, ≤ 1, where the two factors apart could overflow.
    b_b0 = tl.load(p_beta + o_i * HV, mask=m_0, other=0.0).to(tl.float32)
    b_b1 = tl.load(p_beta + (o_i + 16) * HV, mask=m_1, other=0.0).to(tl.float32)
    b_b2 = tl.load(p_beta + (o_i + 32) * HV, mask=m_2, other=0.0).to(tl.float32)
    b_b3 = tl.load(p_beta + (o_i + 48) * HV, mask=m_3, other=0.0).to(tl.float32)
    b_A10 *= b_b1[:, None] * tl.exp(b_g1[:, None] - b_g0[None, :])
    b_A20 *= b_b2[:, None] * tl.exp(b_g2[:, None] - b_g0[None, :])
    b_A21 *= b_b2[:, None] * tl.exp(b_g2[:, None] - b_g1[None, :])
    b_A30 *= b_b3[:, None] * tl.exp(b_g3[:, None] - b_g0[None, :])
    b_A31 *= b_b3[:, None] * tl.exp(b_g3[:, None] - b_g1[None, :])
    b_A32 *= b_b3[:, None] * tl.exp(b_g3[:, None] - b_g2[None, :])
    # Diagonal blocks: strictly lower only; `where` also drops the exp of positive sums above it.
    m_lower = o_i[:, None] > o_i[None, :]
    b_A00 = tl.where(m_lower, b_A00 * b_b0[:, None] * tl.exp(b_g0[:, None] - b_g0[None, :]), 0.0)
    b_A11 = tl.where(m_lower, b_A11 * b_b1[:, None] * tl.exp(b_g1[:, None] - b_g1[None, :]), 0.0)
    b_A22 = tl.where(m_lower, b_A22 * b_b2[:, None] * tl.exp(b_g2[:, None] - b_g2[None, :]), 0.0)
    b_A33 = tl.where(m_lower, b_A33 * b_b3[:, None] * tl.exp(b_g3[:, None] - b_g3[None, :]), 0.0)

    b_X00 = _invert_unit_lower_16(b_A00, o_i)
    b_X11 = _invert_unit_lower_16(b_A11, o_i)
    b_X22 = _invert_unit_lower_16(b_A22, o_i)
    b_X33 = _invert_unit_lower_16(b_A33, o_i)

    # Ai_ij = −Ai_ii · Σ_{j≤m<i} A_im · Ai_mj, first sub-diagonal, then second, then the corner.
    b_X10 = -tl.dot(
        b_X11, tl.dot(b_A10, b_X00, input_precision=MERGE_PRECISION), input_precision=MERGE_PRECISION
    )
    b_X21 = -tl.dot(
        b_X22, tl.dot(b_A21, b_X11, input_precision=MERGE_PRECISION), input_precision=MERGE_PRECISION
    )
    b_X32 = -tl.dot(
        b_X33, tl.dot(b_A32, b_X22, input_precision=MERGE_PRECISION), input_precision=MERGE_PRECISION
    )
    b_S = tl.dot(b_A20, b_X00, input_precision=MERGE_PRECISION)
    b_S = tl.dot(b_A21, b_X10, b_S, input_precision=MERGE_PRECISION)
    b_X20 = -tl.dot(b_X22, b_S, input_precision=MERGE_PRECISION)
    b_S = tl.dot(b_A31, b_X11, input_precision=MERGE_PRECISION)
    b_S = tl.dot(b_A32, b_X21, b_S, input_precision=MERGE_PRECISION)
    b_X31 = -tl.dot(b_X33, b_S, input_precision=MERGE_PRECISION)
    b_S = tl.dot(b_A30, b_X00, input_precision=MERGE_PRECISION)
    b_S = tl.dot(b_A31, b_X10, b_S, input_precision=MERGE_PRECISION)
    b_S = tl.dot(b_A32, b_X20, b_S, input_precision=MERGE_PRECISION)
    b_X30 = -tl.dot(b_X33, b_S, input_precision=MERGE_PRECISION)

    # Every column of each valid row is written, zeros above the diagonal: Ai comes from torch.empty.
    # Columns past a partial chunk's end come out zero without a mask (Ai is lower triangular).
    b_zero = tl.zeros([16, 16], dtype=tl.float32)
    _store_block(p_Ai, b_X00, o_i, L, 0, 0, HV * BT, INTERPRETED)
    _store_block(p_Ai, b_zero, o_i, L, 0, 1, HV * BT, INTERPRETED)
    _store_block(p_Ai, b_zero, o_i, L, 0, 2, HV * BT, INTERPRETED)
    _store_block(p_Ai, b_zero, o_i, L, 0, 3, HV * BT, INTERPRETED)
    _store_block(p_Ai, b_X10, o_i, L, 1, 0, HV * BT, INTERPRETED)
    _store_block(p_Ai, b_X11, o_i, L, 1, 1, HV * BT, INTERPRETED)
    _store_block(p_Ai, b_zero, o_i, L, 1, 2, HV * BT, INTERPRETED)
    _store_block(p_Ai, b_zero, o_i, L, 1, 3, HV * BT, INTERPRETED)
    _store_block(p_Ai, b_X20, o_i, L, 2, 0, HV * BT, INTERPRETED)
    _store_block(p_Ai, b_X21, o_i, L, 2, 1, HV * BT, INTERPRETED)
    _store_block(p_Ai, b_X22, o_i, L, 2, 2, HV * BT, INTERPRETED)
    _store_block(p_Ai, b_zero, o_i, L, 2, 3, HV * BT, INTERPRETED)
    _store_block(p_Ai, b_X30, o_i, L, 3, 0, HV * BT, INTERPRETED)
    _store_block(p_Ai, b_X31, o_i, L, 3, 1, HV * BT, INTERPRETED)
    _store_block(p_Ai, b_X32, o_i, L, 3, 2, HV * BT, INTERPRETED)
    _store_block(p_Ai, b_X33, o_i, L, 3, 3, HV * BT, INTERPRETED)


def _key(dtype: torch.dtype | str, H: int, HV: int, K: int, tokens: int) -> Key:
    return SPEC.memoised_key(dtype, H, HV, K, token_bucket(tokens))


def _launch_chunk_kkt_solve(inputs: dict, outputs: dict, config: Config) -> None:
    k, beta = inputs["k"], inputs["beta"]
    cu_seqlens, chunk_indices = inputs.get("cu_seqlens"), inputs.get("chunk_indices")
    B, T, H, K = k.shape
    HV = beta.shape[2]
    if cu_seqlens is None:
        chunks = cdiv(T, CHUNK_SIZE)
    else:
        if chunk_indices is None:
            chunk_indices = _varlen.chunk_indices(cu_seqlens, T, CHUNK_SIZE)
        chunks = chunk_indices.shape[0]  # max_chunks(T, N): known on the host without a sync
    launch(
        _chunk_kkt_solve_kernel,
        (chunks * B * HV,),
        config,
        k=k,
        g=inputs["g"],
        beta=beta,
        gc=outputs["gc"],
        Ai=outputs["Ai"],
        cu_seqlens=cu_seqlens,
        chunk_indices=chunk_indices,
        T=T,
        BHV=B * HV,
        H=H,
        HV=HV,
        K=K,
        BT=CHUNK_SIZE,
        MERGE_PRECISION=MERGE_PRECISION,
        INTERPRETED=INTERPRETED,
        IS_VARLEN=cu_seqlens is not None,
    )


def _make_outputs(inputs: dict) -> dict[str, torch.Tensor]:
    k, g = inputs["k"], inputs["g"]
    B, T, HV = g.shape
    return {
        "gc": torch.empty(B, T, HV, dtype=torch.float32, device=k.device),
        "Ai": torch.empty(B, T, HV, CHUNK_SIZE, dtype=k.dtype, device=k.device),
    }


def _check_arguments(
    k: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, cu_seqlens: torch.Tensor | None
) -> None:
    if k.dim() != 4:
        raise ValueError(f"chunk_kkt_solve: k must be [B, T, H, K], got shape {tuple(k.shape)}")
    B, T, H, _ = k.shape
    if g.dim() != 3 or g.shape[:2] != (B, T) or g.shape[2] % H:
        raise ValueError(
            f"chunk_kkt_solve: g must be [B, T, HV] = [{B}, {T}, a multiple of {H}], got {tuple(g.shape)}"
        )
    if beta.shape != g.shape:
        raise ValueError(
            f"chunk_kkt_solve: beta must have g's shape {tuple(g.shape)}, got {tuple(beta.shape)}"
        )
    if g.dtype != torch.float32:
        raise ValueError(f"chunk_kkt_solve: g must be float32 (log-space decay), got {g.dtype}")
    if cu_seqlens is not None and (B != 1 or cu_seqlens.dtype != torch.int32):
        raise ValueError(
            f"chunk_kkt_solve: cu_seqlens needs B == 1 (got {B}) and int32 (got {cu_seqlens.dtype})"
        )


def chunk_kkt_solve(
    k: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    cu_seqlens: torch.Tensor | None = None,
    chunk_indices: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(gc [B,T,HV] float32, Ai [B,T,HV,64] in k's dtype) for one prefill call.

    k [B,T,H,K] (bf16/fp16, contiguous), g [B,T,HV] float32, beta [B,T,HV] float32 or k's dtype;
    with cu_seqlens (int32 [N+1], B == 1) chunks restart at every sequence start; `chunk_indices`
    (`_varlen.chunk_indices`) is built here when not given. Row t of Ai holds row t − (its chunk's
    start) of that chunk's (I + A)⁻¹; columns past a partial chunk's end are zero.
    """
    _check_arguments(k, g, beta, cu_seqlens)
    return chunk_kkt_solve_unchecked(k, g, beta, cu_seqlens, chunk_indices)


def chunk_kkt_solve_unchecked(
    k: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    chunk_indices: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`chunk_kkt_solve` on arguments already checked: `chunk_gated_delta_rule` checks them once per call."""
    inputs = {"k": k, "g": g, "beta": beta, "cu_seqlens": cu_seqlens, "chunk_indices": chunk_indices}
    outputs = _make_outputs(inputs)
    B, T, H, K = k.shape
    _launch_chunk_kkt_solve(
        inputs, outputs, resolve_config(SPEC, _key(k.dtype, H, g.shape[2], K, B * T), k.device)
    )
    return outputs["gc"], outputs["Ai"]


def chunk_kkt_solve_reference(inputs: dict) -> dict[str, torch.Tensor]:
    """float64 gc and Ai, from `chunk_stages_reference`."""
    k, g = inputs["k"], inputs["g"]
    # The reference also runs the recurrence; a one-wide zero v keeps that part negligible.
    v = torch.zeros(*g.shape, 1, dtype=torch.float64, device=k.device)
    stages_ref = chunk_stages_reference(k, k, v, g, inputs["beta"], cu_seqlens=inputs.get("cu_seqlens"))
    return {"gc": stages_ref["gc"], "Ai": stages_ref["Ai"]}


def _make_inputs(key: Key, device: torch.device | str, seed: int) -> dict:
    """k L2-normalised in the key's dtype, g = logsigmoid(randn) and beta = sigmoid(randn) in float32."""
    H, HV, K, T = (int(key[f]) for f in ("H", "HV", "K", "T"))
    dtype = getattr(torch, str(key["dtype"]))
    gen = torch.Generator("cpu").manual_seed(seed)
    k = torch.nn.functional.normalize(randn(1, T, H, K, generator=gen, device=device), dim=-1).to(dtype)
    g = torch.nn.functional.logsigmoid(randn(1, T, HV, generator=gen, device=device))
    beta = torch.sigmoid(randn(1, T, HV, generator=gen, device=device))
    return {name: t.to(device) for name, t in (("k", k), ("g", g), ("beta", beta))}


SPEC = KernelSpec(
    name="chunk_kkt_solve",
    doc=__doc__.splitlines()[0],
    key_fields=("dtype", "H", "HV", "K", "T"),
    space=SPACE,
    default=DEFAULT,
    jit_functions=(
        _chunk_kkt_solve_kernel,
        _rounded,
        _dot_operand,
        _invert_unit_lower_16,
        _load_k_slice,
        _store_block,
        # The first kernels of a varlen prefill (the guard, then the chunk indices this kernel reads):
        # listed so that `gdn-tune warmup`, which compiles the jit functions of the specs, compiles
        # them too. The bookkeeping kernel is hashed, as it was when the sm90 tables were made.
        _varlen._chunk_bookkeeping_kernel,
        _varlen._varlen_guard_kernel,
    ),
    untuned_functions=(_varlen._varlen_guard_kernel,),
    key_for=lambda w: _key(w.dtype, w.H, w.HV, w.K, w.tokens),
    make_inputs=_make_inputs,
    make_outputs=_make_outputs,
    launch=_launch_chunk_kkt_solve,
    reference=chunk_kkt_solve_reference,
    # k read once per key head (the HV/H value heads sharing it hit L2), g and beta read, gc written
    # (float32), Ai written (64 columns in k's 2-byte dtype).
    bytes_moved=lambda key: (
        int(key["T"]) * (int(key["H"]) * int(key["K"]) * 2 + int(key["HV"]) * (3 * 4 + CHUNK_SIZE * 2))
    ),
)
SPECS = (SPEC,)
