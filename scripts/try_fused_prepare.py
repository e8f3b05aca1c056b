"""Experiment: chunk_kkt_solve and chunk_wu as one kernel (the cumsum, k·kᵀ, (I + A)⁻¹ and w, u per chunk).

    python scripts/try_fused_prepare.py               # GPU host (default with CUDA): time it against the pair
    python scripts/try_fused_prepare.py --check       # CPU, TRITON_INTERPRET=1: errors against the pair, float64
    python scripts/try_fused_prepare.py --compile-check [--archs 80,90,100,120]   # no GPU: compile the grid

The package's prefill runs `chunk_kkt_solve` (gc, and Ai = (I + A)⁻¹ written in k's dtype) then
`chunk_wu` (w = Ai·(β·exp(gc)·k), u = Ai·(β·v), reading Ai, gc, β, k and v back). The prototype here
does both in one program per (chunk of 64 tokens, value head), the package's flat grid (value heads
fastest, varlen through `chunk_indices`). Its first half is chunk_kkt_solve's body unchanged (it calls
that module's jit helpers: the same 16×16 blocks, forward substitution and tf32 merges); Ai then stays
in registers as its ten 16×16 blocks on and below the diagonal, rounded to k's dtype as the pair
stores it, and each 16-row block of u (and w) is Σ_c (Ai_rc·diag(β_c)) · v_c over the blocks c ≤ r,
with the column scale folded into Ai and rounded to k's dtype as chunk_wu does. Written: gc (float32,
which chunk_state / chunk_output / chunk_fused read), w and u; Ai never leaves the chip, and k, β and
g are read once instead of twice.

Timing (the GPU host): the ANCHORS prefill shapes dp-8k, tp1-next, tp8 (one sequence each, no
cu_seqlens) and dp-64x128 (64 sequences of 128, varlen), K = V = 128, bf16; the pair at the configs
the shipped sm90 tables give (resolved by the package's entry points) against the prototype at every
config of its grid, each by CUDA-graph replay (scripts/bench_kernels.py's `time_graph`). The grid is
compiled first in worker processes (--jobs) on small inputs of the same specialisation, so the timed
process finds every binary in Triton's cache.

Measured (H200, Triton 3.6, CUDA-graph median of 30, this grid with BK 64; 50 s wall in all), package
pair at its sm90 table configs → best fused config, pair/fused:
    dp-8k      0.254 → 0.275 ms (0.92x, BC 64, 1 warp, 2 stages)   fused I/O floor 0.092 ms (442 MB)
    tp1-next   0.144 → 0.146 ms (0.98x, BC 64, 1 warp, 2 stages)   floor 0.050 ms (238 MB)
    tp8        0.042 → 0.040 ms (1.04x, BC 128, 1 warp, 1 stage)   floor 0.012 ms (55 MB)
    dp-64x128  0.306 → 0.280 ms (1.09x, BC 128, 1 warp, 3 stages)  floor 0.092 ms (442 MB)
w, u and gc equal the pair's bitwise on every shape. The fused kernel sits at 3x its I/O floor: one
warp per (chunk, head) is latency-bound (the solve's 16-row tiles), and the 172 MB less traffic
(Ai written and read, k, β, gc read again: 614 → 442 MB at dp-8k) does not show; 2 warps and more
are slower, as for chunk_kkt_solve alone. Shared memory on sm90: 3-18 KB per config (72/72 fit).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gdn_kernels import _varlen
from gdn_kernels._launch import INTERPRETED, cdiv, launch
from gdn_kernels._spec import CHUNK_SIZE, Config
from gdn_kernels.chunk_kkt_solve import (
    MERGE_PRECISION,
    _dot_operand,
    _invert_unit_lower_16,
    _load_k_slice,
    _rounded,
)

# The prototype's grid: K slice of k·kᵀ (as chunk_kkt_solve's BK), column slice of the w and u products
# (one for both), warps and stages. chunk_kkt_solve runs best on 1 warp (16-row tiles), chunk_wu on 4.
GRID_BK = (32, 64, 128)
GRID_BC = (64, 128)
GRID_WARPS = (1, 2, 4, 8)
GRID_STAGES = (1, 2, 3)
QUICK_BK = (64,)
DEFAULT = Config.of(BK=64, BC=64, num_warps=1, num_stages=2)
# Per-block shared memory limits (bytes, opt-in maximum) of the targets --compile-check knows.
SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448, 100: 232448, 120: 101376}
PEAK_BANDWIDTH = 4.8e12  # H200 HBM3e, the brief's floor
# (name, H, HV, sequence lengths); K = V = 128, bf16. One sequence: no cu_seqlens.
SHAPES = [
    ("dp-8k", 16, 64, [8192]),
    ("tp1-next", 16, 32, [8192]),
    ("tp8", 2, 8, [8192]),
    ("dp-64x128", 16, 64, [128] * 64),
]
HEAD = 128


@triton.jit
def _scaled_block(b_X, b_s, dtype: tl.constexpr, INTERPRETED: tl.constexpr):
    """Block of Ai·diag(s) as chunk_wu forms it: Ai rounded to k's dtype (as chunk_kkt_solve stores it),
    widened, scaled by column, rounded again; then a tl.dot operand."""
    b_x = _rounded(b_X, dtype, INTERPRETED).to(tl.float32) * b_s[None, :]
    return _dot_operand(_rounded(b_x, dtype, INTERPRETED), INTERPRETED)


@triton.jit
def _store_rows(
    p, b_x, r: tl.constexpr, o_i, L, o_c, STRIDE: tl.constexpr, NCOL: tl.constexpr, INTERPRETED: tl.constexpr
):
    """Rows 16r..16r+15 of a chunk's [L, NCOL] output, columns o_c; nothing past L or NCOL."""
    m = ((r * 16 + o_i) < L)[:, None] & (o_c < NCOL)[None, :]
    p_x = p + (r * 16 + o_i)[:, None] * STRIDE + o_c[None, :]
    tl.store(p_x, _rounded(b_x, p.dtype.element_ty, INTERPRETED), mask=m)


@triton.jit
def _fused_prepare_kernel(
    k,
    v,
    g,
    beta,
    gc,
    w,
    u,
    cu_seqlens,
    chunk_indices,
    T,
    BHV,
    H: tl.constexpr,
    HV: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BC: tl.constexpr,
    MERGE_PRECISION: tl.constexpr,
    INTERPRETED: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    # chunk_kkt_solve's prologue: flat grid, value heads fastest.
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
    L = tl.minimum(eos - t0, BT).to(tl.int32)
    p_k = k + (t0 * H + i_h) * K
    p_v = v + (t0 * HV + i_hv) * V
    p_w = w + (t0 * HV + i_hv) * K
    p_u = u + (t0 * HV + i_hv) * V
    p_g, p_beta, p_gc = g + t0 * HV + i_hv, beta + t0 * HV + i_hv, gc + t0 * HV + i_hv

    o_i = tl.arange(0, 16)
    m_0, m_1, m_2, m_3 = o_i < L, o_i + 16 < L, o_i + 32 < L, o_i + 48 < L

    # gc (g of any float dtype, cumulated in float32 as the package does after its host cast).
    b_g0 = tl.cumsum(tl.load(p_g + o_i * HV, mask=m_0, other=0.0).to(tl.float32), 0)
    b_g1 = tl.cumsum(tl.load(p_g + (o_i + 16) * HV, mask=m_1, other=0.0).to(tl.float32), 0) + tl.sum(
        tl.where(o_i == 15, b_g0, 0.0), 0
    )
    b_g2 = tl.cumsum(tl.load(p_g + (o_i + 32) * HV, mask=m_2, other=0.0).to(tl.float32), 0) + tl.sum(
        tl.where(o_i == 15, b_g1, 0.0), 0
    )
    b_g3 = tl.cumsum(tl.load(p_g + (o_i + 48) * HV, mask=m_3, other=0.0).to(tl.float32), 0) + tl.sum(
        tl.where(o_i == 15, b_g2, 0.0), 0
    )
    tl.store(p_gc + o_i * HV, b_g0, mask=m_0)
    tl.store(p_gc + (o_i + 16) * HV, b_g1, mask=m_1)
    tl.store(p_gc + (o_i + 32) * HV, b_g2, mask=m_2)
    tl.store(p_gc + (o_i + 48) * HV, b_g3, mask=m_3)

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
    m_lower = o_i[:, None] > o_i[None, :]
    b_A00 = tl.where(m_lower, b_A00 * b_b0[:, None] * tl.exp(b_g0[:, None] - b_g0[None, :]), 0.0)
    b_A11 = tl.where(m_lower, b_A11 * b_b1[:, None] * tl.exp(b_g1[:, None] - b_g1[None, :]), 0.0)
    b_A22 = tl.where(m_lower, b_A22 * b_b2[:, None] * tl.exp(b_g2[:, None] - b_g2[None, :]), 0.0)
    b_A33 = tl.where(m_lower, b_A33 * b_b3[:, None] * tl.exp(b_g3[:, None] - b_g3[None, :]), 0.0)

    b_X00 = _invert_unit_lower_16(b_A00, o_i)
    b_X11 = _invert_unit_lower_16(b_A11, o_i)
    b_X22 = _invert_unit_lower_16(b_A22, o_i)
    b_X33 = _invert_unit_lower_16(b_A33, o_i)

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

    # u = Ai·diag(β)·v, block row by block row: u_r = Σ_{c ≤ r} (Ai_rc·diag(β_c)) · v_c.
    dt: tl.constexpr = k.dtype.element_ty
    b_P00 = _scaled_block(b_X00, b_b0, dt, INTERPRETED)
    b_P10 = _scaled_block(b_X10, b_b0, dt, INTERPRETED)
    b_P11 = _scaled_block(b_X11, b_b1, dt, INTERPRETED)
    b_P20 = _scaled_block(b_X20, b_b0, dt, INTERPRETED)
    b_P21 = _scaled_block(b_X21, b_b1, dt, INTERPRETED)
    b_P22 = _scaled_block(b_X22, b_b2, dt, INTERPRETED)
    b_P30 = _scaled_block(b_X30, b_b0, dt, INTERPRETED)
    b_P31 = _scaled_block(b_X31, b_b1, dt, INTERPRETED)
    b_P32 = _scaled_block(b_X32, b_b2, dt, INTERPRETED)
    b_P33 = _scaled_block(b_X33, b_b3, dt, INTERPRETED)
    for i_v in range(tl.cdiv(V, BC)):
        o_c = i_v * BC + tl.arange(0, BC)
        b_v0 = _load_k_slice(p_v, 0, o_i, L, o_c, HV * V, V, INTERPRETED)
        b_v1 = _load_k_slice(p_v, 1, o_i, L, o_c, HV * V, V, INTERPRETED)
        b_v2 = _load_k_slice(p_v, 2, o_i, L, o_c, HV * V, V, INTERPRETED)
        b_v3 = _load_k_slice(p_v, 3, o_i, L, o_c, HV * V, V, INTERPRETED)
        _store_rows(p_u, tl.dot(b_P00, b_v0), 0, o_i, L, o_c, HV * V, V, INTERPRETED)
        b_u1 = tl.dot(b_P11, b_v1, tl.dot(b_P10, b_v0))
        _store_rows(p_u, b_u1, 1, o_i, L, o_c, HV * V, V, INTERPRETED)
        b_u2 = tl.dot(b_P22, b_v2, tl.dot(b_P21, b_v1, tl.dot(b_P20, b_v0)))
        _store_rows(p_u, b_u2, 2, o_i, L, o_c, HV * V, V, INTERPRETED)
        b_u3 = tl.dot(b_P33, b_v3, tl.dot(b_P32, b_v2, tl.dot(b_P31, b_v1, tl.dot(b_P30, b_v0))))
        _store_rows(p_u, b_u3, 3, o_i, L, o_c, HV * V, V, INTERPRETED)

    # w = Ai·diag(β·exp(gc))·k, the same way.
    b_s0 = b_b0 * tl.exp(b_g0)
    b_s1 = b_b1 * tl.exp(b_g1)
    b_s2 = b_b2 * tl.exp(b_g2)
    b_s3 = b_b3 * tl.exp(b_g3)
    b_P00 = _scaled_block(b_X00, b_s0, dt, INTERPRETED)
    b_P10 = _scaled_block(b_X10, b_s0, dt, INTERPRETED)
    b_P11 = _scaled_block(b_X11, b_s1, dt, INTERPRETED)
    b_P20 = _scaled_block(b_X20, b_s0, dt, INTERPRETED)
    b_P21 = _scaled_block(b_X21, b_s1, dt, INTERPRETED)
    b_P22 = _scaled_block(b_X22, b_s2, dt, INTERPRETED)
    b_P30 = _scaled_block(b_X30, b_s0, dt, INTERPRETED)
    b_P31 = _scaled_block(b_X31, b_s1, dt, INTERPRETED)
    b_P32 = _scaled_block(b_X32, b_s2, dt, INTERPRETED)
    b_P33 = _scaled_block(b_X33, b_s3, dt, INTERPRETED)
    for i_k in range(tl.cdiv(K, BC)):
        o_c = i_k * BC + tl.arange(0, BC)
        b_k0 = _load_k_slice(p_k, 0, o_i, L, o_c, H * K, K, INTERPRETED)
        b_k1 = _load_k_slice(p_k, 1, o_i, L, o_c, H * K, K, INTERPRETED)
        b_k2 = _load_k_slice(p_k, 2, o_i, L, o_c, H * K, K, INTERPRETED)
        b_k3 = _load_k_slice(p_k, 3, o_i, L, o_c, H * K, K, INTERPRETED)
        _store_rows(p_w, tl.dot(b_P00, b_k0), 0, o_i, L, o_c, HV * K, K, INTERPRETED)
        b_w1 = tl.dot(b_P11, b_k1, tl.dot(b_P10, b_k0))
        _store_rows(p_w, b_w1, 1, o_i, L, o_c, HV * K, K, INTERPRETED)
        b_w2 = tl.dot(b_P22, b_k2, tl.dot(b_P21, b_k1, tl.dot(b_P20, b_k0)))
        _store_rows(p_w, b_w2, 2, o_i, L, o_c, HV * K, K, INTERPRETED)
        b_w3 = tl.dot(b_P33, b_k3, tl.dot(b_P32, b_k2, tl.dot(b_P31, b_k1, tl.dot(b_P30, b_k0))))
        _store_rows(p_w, b_w3, 3, o_i, L, o_c, HV * K, K, INTERPRETED)


def fused_prepare(
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    cu_seqlens: torch.Tensor | None = None,
    chunk_indices: torch.Tensor | None = None,
    config: Config = DEFAULT,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gc [B,T,HV] float32, w [B,T,HV,K], u [B,T,HV,V] in k's dtype): chunk_kkt_solve + chunk_wu in one
    launch. Inputs as those stages take them (k [B,T,H,K], v [B,T,HV,V] contiguous, g float32 or
    16-bit, beta float32 or k's dtype; cu_seqlens int32 [N+1] with B == 1); `out` = (gc, w, u) to
    write into."""
    B, T, H, K = k.shape
    HV, V = v.shape[2], v.shape[3]
    if out is None:
        out = (
            torch.empty(B, T, HV, dtype=torch.float32, device=k.device),
            torch.empty(B, T, HV, K, dtype=k.dtype, device=k.device),
            torch.empty(B, T, HV, V, dtype=k.dtype, device=k.device),
        )
    gc, w, u = out
    if cu_seqlens is None:
        chunks = cdiv(T, CHUNK_SIZE)
    else:
        if chunk_indices is None:
            chunk_indices = _varlen.chunk_indices(cu_seqlens, T, CHUNK_SIZE)
        chunks = chunk_indices.shape[0]
    launch(
        _fused_prepare_kernel,
        (chunks * B * HV,),
        config,
        k=k,
        v=v,
        g=g,
        beta=beta,
        gc=gc,
        w=w,
        u=u,
        cu_seqlens=cu_seqlens,
        chunk_indices=chunk_indices,
        T=T,
        BHV=B * HV,
        H=H,
        HV=HV,
        K=K,
        V=V,
        BT=CHUNK_SIZE,
        MERGE_PRECISION=MERGE_PRECISION,
        INTERPRETED=INTERPRETED,
        IS_VARLEN=cu_seqlens is not None,
    )
    return gc, w, u


def package_pair(k, v, g, beta, cu_seqlens=None, chunk_indices=None):
    """(gc, w, u) from the package's two stages, at the configs its tables give for the device."""
    from gdn_kernels.chunk_kkt_solve import chunk_kkt_solve_unchecked
    from gdn_kernels.chunk_wu import chunk_wu_unchecked

    g = g if g.dtype == torch.float32 else g.float()  # as chunk_gated_delta_rule casts it
    gc, Ai = chunk_kkt_solve_unchecked(k, g, beta, cu_seqlens, chunk_indices)
    w, u = chunk_wu_unchecked(k, v, beta, gc, Ai, cu_seqlens, chunk_indices)
    return gc, w, u


def grid(bks=GRID_BK, bcs=GRID_BC, warps=GRID_WARPS, stages=GRID_STAGES, K=HEAD, V=HEAD) -> list[Config]:
    """The prototype's configs; slices wider than the head (rounded up to a power of two) are left out."""
    limit_k, limit_c = max(16, triton.next_power_of_2(K)), max(16, triton.next_power_of_2(max(K, V)))
    return [
        Config.of(BK=bk, BC=bc, num_warps=nw, num_stages=ns)
        for bk, bc, nw, ns in itertools.product(bks, bcs, warps, stages)
        if bk <= limit_k and bc <= limit_c
    ]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-300)).item()


def make_inputs(H, HV, K, V, lengths, dtype, g_dtype, beta_dtype, device, seed=0, varlen=None):
    """Packed inputs (B == 1 with cu_seqlens when `varlen`, else B sequences of equal length)."""
    gen = torch.Generator("cpu").manual_seed(seed)
    varlen = len(lengths) > 1 if varlen is None else varlen
    B, T = (1, sum(lengths)) if varlen else (len(lengths), lengths[0])
    k = torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1).to(dtype)
    v = torch.randn(B, T, HV, V, generator=gen).to(dtype)
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, HV, generator=gen)).to(g_dtype)
    beta = torch.sigmoid(torch.randn(B, T, HV, generator=gen)).to(beta_dtype)
    cu = None
    if varlen:
        cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
    moved = {name: t.to(device) for name, t in (("k", k), ("v", v), ("g", g), ("beta", beta))}
    moved["cu_seqlens"] = None if cu is None else cu.to(device)
    return moved


# (label, H, HV, K, V, lengths, varlen, dtype, g dtype, beta dtype): small, odd, varlen, GQA.
CHECK_CASES = [
    ("fixed B2 T130 H1 HV1", 1, 1, 128, 128, [130, 130], False, "bfloat16", "float32", "float32"),
    ("fixed B1 T77 H2 HV8 fp16 g16 b16", 2, 8, 128, 128, [77], False, "float16", "bfloat16", "float16"),
    ("varlen 1,63,64,65,10 H1 HV4", 1, 4, 128, 128, [1, 63, 64, 65, 10], True, "bfloat16", "float32", "bfloat16"),
    ("varlen 65,1,130 H2 HV2 K96 V64", 2, 2, 96, 64, [65, 1, 130], True, "bfloat16", "float32", "float32"),
    ("varlen 1 H1 HV4 K32 V32", 1, 4, 32, 32, [1], True, "float16", "float16", "float32"),
]  # fmt: skip


def run_check(configs: list[Config]) -> int:
    from gdn_kernels.reference import chunk_stages_reference

    if not INTERPRETED and not torch.cuda.is_available():
        print("--check needs TRITON_INTERPRET=1 on a CPU (or a GPU)", file=sys.stderr)
        return 2
    device = "cpu" if INTERPRETED else "cuda"
    worst = {"vs pair": 0.0, "vs f64": 0.0, "pair vs f64": 0.0}
    failures = 0
    for label, H, HV, K, V, lengths, varlen, dt, g_dt, b_dt in CHECK_CASES:
        x = make_inputs(H, HV, K, V, lengths, getattr(torch, dt), getattr(torch, g_dt), getattr(torch, b_dt),
                        device, seed=len(label), varlen=varlen)  # fmt: skip
        k, v, g, beta, cu = x["k"], x["v"], x["g"], x["beta"], x["cu_seqlens"]
        ci = None if cu is None else _varlen.chunk_indices(cu, k.shape[1], CHUNK_SIZE)
        ref = chunk_stages_reference(k, k, v, g, beta, cu_seqlens=cu)
        pair = package_pair(k, v, g, beta, cu, ci)
        for config in configs:
            B, T = k.shape[:2]
            out = (
                torch.full((B, T, HV), float("nan"), dtype=torch.float32, device=device),
                torch.full((B, T, HV, K), float("nan"), dtype=k.dtype, device=device),
                torch.full((B, T, HV, V), float("nan"), dtype=k.dtype, device=device),
            )
            fused = fused_prepare(k, v, g, beta, cu, ci, config, out=out)
            unwritten = sum(int(t.isnan().sum()) for t in fused)
            errs = []
            ok = unwritten == 0
            for name, f, p, r in zip(
                ("gc", "w", "u"), fused, pair, (ref["gc"], ref["w"], ref["u"]), strict=True
            ):
                e_pair, e_ref, e_pr = rel_err(f, p), rel_err(f, r), rel_err(p, r)
                errs.append(f"{name} {e_pair:.1e}/{e_ref:.1e}/{e_pr:.1e}")
                worst["vs pair"] = max(worst["vs pair"], e_pair)
                worst["vs f64"] = max(worst["vs f64"], e_ref)
                worst["pair vs f64"] = max(worst["pair vs f64"], e_pr)
                # Same math and rounding as the pair; the float64 bound is the 16-bit rounding of w, u.
                ok &= e_pair <= (1e-6 if name == "gc" else 2e-3) and e_ref <= (1e-5 if name == "gc" else 6e-3)
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {label:34s} {config.label:32s} unwritten {unwritten}  "
                  f"rel L2 fused-vs-pair/fused-vs-f64/pair-vs-f64: {'  '.join(errs)}")  # fmt: skip
    print(f"worst rel L2: fused vs pair {worst['vs pair']:.2e}, fused vs float64 {worst['vs f64']:.2e}, "
          f"pair vs float64 {worst['pair vs f64']:.2e}; {failures} failing")  # fmt: skip
    return 1 if failures else 0


def _meta_inputs(H, HV, T, N, varlen):
    meta, bf16, f32 = "meta", torch.bfloat16, torch.float32
    x = {
        "k": torch.empty(1, T, H, HEAD, dtype=bf16, device=meta),
        "v": torch.empty(1, T, HV, HEAD, dtype=bf16, device=meta),
        "g": torch.empty(1, T, HV, dtype=f32, device=meta),
        "beta": torch.empty(1, T, HV, dtype=f32, device=meta),
        "cu_seqlens": None,
        "chunk_indices": None,
    }
    if varlen:
        x["cu_seqlens"] = torch.empty(N + 1, dtype=torch.int32, device=meta)
        x["chunk_indices"] = torch.empty(
            _varlen.max_chunks(T, N, CHUNK_SIZE), 2, dtype=torch.int32, device=meta
        )
    return x


def run_compile_check(configs: list[Config], archs: list[int], varlen: bool) -> int:
    """Compile each config for each target on meta tensors (dp-8k's specialisation), no GPU."""
    from gdn_kernels._launch import compile_for_target, recording

    if INTERPRETED:
        print("--compile-check compiles: run it without TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    x = _meta_inputs(16, 64, 8192, 64, varlen)
    failures = 0
    for cc in archs:
        limit = SHARED_LIMIT.get(cc)
        fits = 0
        for config in configs:
            with recording() as records:
                fused_prepare(x["k"], x["v"], x["g"], x["beta"], x["cu_seqlens"], x["chunk_indices"], config)
            start = time.perf_counter()
            try:
                compiled = compile_for_target(records[0], cc)
            except Exception as exc:
                failures += 1
                print(
                    f"sm{cc} {config.label:32s} FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                )
                continue
            shared = compiled.metadata.shared
            ok = limit is None or shared <= limit
            fits += ok
            failures += not ok
            print(f"sm{cc} {config.label:32s} shared {shared:6d} B{'' if ok else ' OVER ' + str(limit)}"
                  f"  ({time.perf_counter() - start:.1f} s)")  # fmt: skip
        print(f"sm{cc}: {fits}/{len(configs)} configs compile within {limit} bytes of shared memory")
    return 1 if failures else 0


def io_bytes(H, HV, T, fused: bool) -> int:
    """Bytes each must move at the least (K = V = 128, 2-byte k, v, w, u, Ai; float32 g, β, gc)."""
    K = V = HEAD
    common = T * (H * K * 2 + HV * (4 + 4 + 4 + K * 2 + V * 2))  # k, g, β read; gc, w, u written (v read)
    common += T * HV * V * 2
    if fused:
        return common
    # The pair also writes and reads Ai, and reads k, β and gc a second time.
    return common + T * (HV * CHUNK_SIZE * 2 * 2 + H * K * 2 + HV * (4 + 4))


def _warm_one(name: str, H: int, HV: int, lengths_small: list[int], varlen: bool, params: tuple) -> str:
    """Compile one (shape, config) in this process by running it on small inputs of the same
    specialisation (Triton's cache is shared through TRITON_CACHE_DIR)."""
    x = make_inputs(H, HV, HEAD, HEAD, lengths_small, torch.bfloat16, torch.float32, torch.float32, "cuda",
                    varlen=varlen)  # fmt: skip
    ci = (
        None
        if x["cu_seqlens"] is None
        else _varlen.chunk_indices(x["cu_seqlens"], x["k"].shape[1], CHUNK_SIZE)
    )
    fused_prepare(x["k"], x["v"], x["g"], x["beta"], x["cu_seqlens"], ci, Config(params))
    torch.cuda.synchronize()
    return name


def run_timing(configs: list[Config], reps: int, jobs: int, shapes: list) -> int:
    from bench_kernels import time_graph

    if not torch.cuda.is_available():
        print("timing needs CUDA (use --check or --compile-check here)", file=sys.stderr)
        return 2
    start = time.perf_counter()
    tasks = []
    for name, H, HV, lengths in shapes:
        varlen = len(lengths) > 1
        # Same specialisation as the real shape: T divisible by 16, same H, HV, B; pointers aligned.
        small = [128, 128] if varlen else [1024]
        tasks += [(name, H, HV, small, varlen, c.params) for c in configs]
    if jobs > 1:
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            list(pool.map(_warm_one, *zip(*tasks, strict=True)))
    print(f"compiled {len(tasks)} (shape, config) pairs in {time.perf_counter() - start:.0f} s ({jobs} jobs)")
    summary = []
    for name, H, HV, lengths in shapes:
        varlen = len(lengths) > 1
        T = sum(lengths)
        x = make_inputs(H, HV, HEAD, HEAD, lengths, torch.bfloat16, torch.float32, torch.float32, "cuda",
                        varlen=varlen)  # fmt: skip
        k, v, g, beta, cu = x["k"], x["v"], x["g"], x["beta"], x["cu_seqlens"]
        ci = None if cu is None else _varlen.chunk_indices(cu, T, CHUNK_SIZE)
        pair_ms = time_graph(lambda: package_pair(k, v, g, beta, cu, ci), reps)
        ref = package_pair(k, v, g, beta, cu, ci)
        out = tuple(torch.empty_like(t) for t in ref)
        rows = []
        for config in configs:
            for t in out:
                t.fill_(float("nan"))
            fused_prepare(k, v, g, beta, cu, ci, config, out=out)
            torch.cuda.synchronize()
            err = max(rel_err(out[1], ref[1]), rel_err(out[2], ref[2]))
            bad = any(bool(t.isnan().any()) for t in out) or err > 5e-3
            ms = time_graph(lambda c=config: fused_prepare(k, v, g, beta, cu, ci, c, out=out), reps)
            rows.append((ms, config, err, bad))
        rows.sort(key=lambda r: r[0])
        good = [r for r in rows if not r[3]]
        floor_ms = io_bytes(H, HV, T, True) / PEAK_BANDWIDTH * 1e3
        pair_floor_ms = io_bytes(H, HV, T, False) / PEAK_BANDWIDTH * 1e3
        print(f"\n{name} (H {H}, HV {HV}, T {T}, {len(lengths)} seq): package pair {pair_ms:.4f} ms "
              f"(its floor {pair_floor_ms:.4f}); fused floor {floor_ms:.4f} ms "
              f"({io_bytes(H, HV, T, True) / 1e6:.0f} MB vs {io_bytes(H, HV, T, False) / 1e6:.0f} MB)")  # fmt: skip
        for ms, config, err, bad in rows[:6]:
            print(f"  {ms:.4f} ms  {config.label:34s} err vs pair {err:.1e}{'  BAD' if bad else ''}")
        if any(r[3] for r in rows):
            print(
                f"  {sum(r[3] for r in rows)} configs wrong or unwritten: "
                + ", ".join(r[1].label for r in rows if r[3])
            )
        if good:
            ms, config = good[0][0], good[0][1]
            print(f"  best fused {ms:.4f} ms {config.label}: pair/fused {pair_ms / ms:.2f}x, "
                  f"fused/floor {ms / floor_ms:.2f}x")  # fmt: skip
            summary.append(f"{name} {pair_ms:.3f}->{ms:.3f} ms ({pair_ms / ms:.2f}x, {config.label})")
        else:
            summary.append(f"{name}: no correct fused config")
    print(f"\n(total {time.perf_counter() - start:.0f} s)")
    print("SUMMARY fused kkt+solve+wu vs package pair: " + "; ".join(summary))
    return 0


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--check", action="store_true", help="errors against the pair and float64 (CPU: TRITON_INTERPRET=1)"
    )
    mode.add_argument(
        "--compile-check", action="store_true", help="compile the grid for --archs without a GPU"
    )
    parser.add_argument(
        "--archs",
        default="90",
        type=_ints,
        help="compute capabilities for --compile-check, e.g. 80,90,100,120",
    )
    parser.add_argument("--varlen", action="store_true", help="--compile-check the varlen specialisation")
    parser.add_argument(
        "--bk", type=_ints, default=None, help=f"BK values (default {GRID_BK}; timing {QUICK_BK})"
    )
    parser.add_argument("--bc", type=_ints, default=GRID_BC, help=f"BC values (default {GRID_BC})")
    parser.add_argument("--warps", type=_ints, default=GRID_WARPS, help=f"num_warps (default {GRID_WARPS})")
    parser.add_argument(
        "--stages", type=_ints, default=GRID_STAGES, help=f"num_stages (default {GRID_STAGES})"
    )
    parser.add_argument("--shapes", default=",".join(s[0] for s in SHAPES), help="timing shapes")
    parser.add_argument("--reps", type=int, default=30, help="CUDA-graph replays per timing (median)")
    parser.add_argument(
        "--jobs", type=int, default=min(16, os.cpu_count() or 1), help="compile processes for timing"
    )
    args = parser.parse_args()  # fmt: skip
    if args.check:
        # The interpreter ignores warps and stages: block sizes only.
        bks = args.bk or (32, 64)
        return run_check(grid(bks, args.bc, (1,), (1,)))
    if args.compile_check:
        return run_compile_check(
            grid(args.bk or GRID_BK, args.bc, args.warps, args.stages), list(args.archs), args.varlen
        )
    shapes = [s for s in SHAPES if s[0] in args.shapes.split(",")]
    return run_timing(
        grid(args.bk or QUICK_BK, args.bc, args.warps, args.stages), args.reps, args.jobs, shapes
    )


if __name__ == "__main__":
    sys.exit(main())
