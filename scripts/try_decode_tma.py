"""Experiment: is the 16-bit tile's load/store path what keeps the bf16 [V, K] gated decode under 90 % of
copy bandwidth? On the GPU host:

    python scripts/try_decode_tma.py [--variants ptr,ptr_stream,...] [--bv 8,16,32,64] [--warps 1,2,4,8]
                                     [--stages 1,2,3] [--jobs 16]

Prototypes of the gated one-token decode of scripts/try_decode_tiles.py (gates from a, b, A_log, dt_bias;
l2norm of q, k; state cache bf16 [slots, HV, V, K] read from and written back to shuffled slots), one
[BV, K] tile of the state per program (grid N·HV × V/BV), that differ only in how the tile moves:

    ptr         plain pointers on the [BV, K] tile (K contiguous), contiguity/divisibility hints
    ptr_stream  the same, loaded .cg and stored .cs (the state is read once, written once; ptxas
                refuses .cg/.cs combined with an eviction policy)
    ptr_evict   the same, loaded and stored with eviction_policy="evict_first"
    i32         the tile read and written as int32 pairs of bf16 ([BV, K/2] words), unpacked by shifts
    i32_stream  i32 with the streaming cache modifiers
    tma_dev     TMA through a device-side tensor descriptor on the slot's [HV·V, K] view
    tma_host    TMA through one host-side descriptor on the whole cache viewed as [slots·HV·V, K]
                (row (slot·HV + hv)·V + v0)
    splitKI     the tile held as [BV, K/KI, KI] (KI 16, 32, 64): a thread holds more of a row, so the two
                reductions over K take fewer shuffle rounds (KI 128 is ptr's layout)
    walk        tma_host's tile, one program per (sequence, head) walking its V/BV tiles in a pipelined
                loop: at num_stages ≥ 2 the next tiles' TMA loads are in flight during the math
    persistC    C programs per SM walk all tiles of all sequences in a pipelined loop (TMA loads)
    ..._alg     splitKI with o and v' from two reductions of the loaded state, none of the updated one
    lean        the tile kept in registers as loaded (bf16) and widened twice, once for the reductions
                (as _alg) and once for the update: half the registers per byte in flight

Each config's o and written state are checked against the package kernel's (table config) on the same
inputs; all timed by CUDA-graph replay; % is of copy bandwidth for the bf16 state read + written.

Without a GPU:
    --compile-check   compiles every variant × config for sm90 (meta tensors, no device) and prints
                      shared memory and the global/TMA memory instructions of its PTX
    --interpret       under TRITON_INTERPRET=1: runs every variant at a tiny shape against a float64
                      reference of the decode

With --jobs J the GPU run first compiles every config for the device's target in J processes (into
Triton's cache, under the key a launch uses), so the timing loop only loads binaries.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

VARIANTS = (
    "ptr", "ptr_stream", "ptr_evict", "i32", "i32_stream", "tma_dev", "tma_host",
    "split128_alg", "split16", "split32", "split64", "split16_alg", "split32_alg", "split64_alg",
    "lean", "lean_stream", "walk", "persist2", "persist4", "persist8",
)  # fmt: skip
DESCRIPTOR_VARIANTS = ("tma_host", "walk", "persist2", "persist4", "persist8")


@triton.jit
def _gates(a, b, A_log, dt_bias, i_n, i_hv, HV: tl.constexpr):
    """(exp(g), β) of sequence i_n, head i_hv: g = −exp(A_log)·softplus(a + dt_bias), β = sigmoid(b)."""
    b_x = tl.load(a + i_n * HV + i_hv).to(tl.float32) + tl.load(dt_bias + i_hv)
    b_g = -tl.exp(tl.load(A_log + i_hv)) * tl.where(b_x <= 20.0, tl.log(1.0 + tl.exp(b_x)), b_x)
    b_beta = tl.sigmoid(tl.load(b + i_n * HV + i_hv).to(tl.float32))
    return tl.exp(b_g), b_beta


@triton.jit
def _qk(q, k, i_n, i_h, scale, H: tl.constexpr, K: tl.constexpr):
    o_k = tl.arange(0, K)
    b_q = tl.load(q + (i_n * H + i_h) * K + o_k).to(tl.float32)
    b_k = tl.load(k + (i_n * H + i_h) * K + o_k).to(tl.float32)
    b_q = b_q * tl.rsqrt(tl.sum(b_q * b_q) + 1e-6) * scale
    b_k = b_k * tl.rsqrt(tl.sum(b_k * b_k) + 1e-6)
    return b_q, b_k


@triton.jit
def _update(b_h, b_q, b_k, b_v, b_decay, b_beta):
    """The prototype's step on a [BV, K] tile (rows of the [V, K] state): S ← decay·S;
    v' = β(v − S k); S ← S + v'⊗k; o = S q. Returns (o, S)."""
    b_h *= b_decay
    b_v = b_beta * (b_v - tl.sum(b_h * b_k[None, :], axis=1))
    b_h += b_v[:, None] * b_k[None, :]
    return tl.sum(b_h * b_q[None, :], axis=1), b_h


@triton.jit
def _decode_ptr_kernel(q, k, v, a, b, A_log, dt_bias, o, state, slots, scale,
                       H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                       BV: tl.constexpr, STREAM: tl.constexpr):  # fmt: skip
    """STREAM 0: default caching; 1: loads .cg, stores .cs; 2: evict_first both ways."""
    i_nh, i_p = tl.program_id(0), tl.program_id(1)
    i_n, i_hv = i_nh // HV, i_nh % HV
    i_h = i_hv // (HV // H)
    i_slot = tl.load(slots + i_n).to(tl.int64)
    if i_slot < 0:
        return
    b_decay, b_beta = _gates(a, b, A_log, dt_bias, i_n, i_hv, HV)
    b_q, b_k = _qk(q, k, i_n, i_h, scale, H, K)
    o_v = i_p * BV + tl.arange(0, BV)
    o_k = tl.arange(0, K)
    # [BV, K] tile: rows of K contiguous bf16 (256 bytes), every row start a multiple of K.
    o_h = tl.max_contiguous(tl.multiple_of(o_v[:, None] * K + o_k[None, :], [K, 8]), [1, K])
    p_h = state + (i_slot * HV + i_hv) * V * K + o_h
    if STREAM == 1:
        b_h = tl.load(p_h, cache_modifier=".cg").to(tl.float32)
    elif STREAM == 2:
        b_h = tl.load(p_h, eviction_policy="evict_first").to(tl.float32)
    else:
        b_h = tl.load(p_h).to(tl.float32)
    b_v = tl.load(v + (i_n * HV + i_hv) * V + o_v).to(tl.float32)
    b_o, b_h = _update(b_h, b_q, b_k, b_v, b_decay, b_beta)
    tl.store(o + (i_n * HV + i_hv) * V + o_v, b_o.to(o.dtype.element_ty))
    if STREAM == 1:
        tl.store(p_h, b_h.to(state.dtype.element_ty), cache_modifier=".cs")
    elif STREAM == 2:
        tl.store(p_h, b_h.to(state.dtype.element_ty), eviction_policy="evict_first")
    else:
        tl.store(p_h, b_h.to(state.dtype.element_ty))


@triton.jit
def _decode_i32_kernel(q, k, v, a, b, A_log, dt_bias, o, state, slots, scale,
                       H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                       BV: tl.constexpr, STREAM: tl.constexpr):  # fmt: skip
    """state is the bf16 cache viewed as int32: word j of a row holds elements 2j (low half) and 2j+1."""
    KW: tl.constexpr = K // 2
    i_nh, i_p = tl.program_id(0), tl.program_id(1)
    i_n, i_hv = i_nh // HV, i_nh % HV
    i_h = i_hv // (HV // H)
    i_slot = tl.load(slots + i_n).to(tl.int64)
    if i_slot < 0:
        return
    b_decay, b_beta = _gates(a, b, A_log, dt_bias, i_n, i_hv, HV)
    o_j = tl.arange(0, KW)
    p_q, p_k = q + (i_n * H + i_h) * K + 2 * o_j, k + (i_n * H + i_h) * K + 2 * o_j
    b_qe, b_qo = tl.load(p_q).to(tl.float32), tl.load(p_q + 1).to(tl.float32)
    b_ke, b_ko = tl.load(p_k).to(tl.float32), tl.load(p_k + 1).to(tl.float32)
    r_q = tl.rsqrt(tl.sum(b_qe * b_qe) + tl.sum(b_qo * b_qo) + 1e-6) * scale
    r_k = tl.rsqrt(tl.sum(b_ke * b_ke) + tl.sum(b_ko * b_ko) + 1e-6)
    b_qe, b_qo, b_ke, b_ko = b_qe * r_q, b_qo * r_q, b_ke * r_k, b_ko * r_k
    o_v = i_p * BV + tl.arange(0, BV)
    o_h = tl.max_contiguous(tl.multiple_of(o_v[:, None] * KW + o_j[None, :], [KW, 4]), [1, KW])
    p_h = state + (i_slot * HV + i_hv) * V * KW + o_h
    if STREAM:
        b_w = tl.load(p_h, cache_modifier=".cg")
    else:
        b_w = tl.load(p_h)
    # bf16 → fp32 is the 16 bits moved to the top of the word.
    b_he = (b_w << 16).to(tl.float32, bitcast=True)
    b_ho = (b_w & -65536).to(tl.float32, bitcast=True)
    b_v = tl.load(v + (i_n * HV + i_hv) * V + o_v).to(tl.float32)
    # _update on the two halves of K.
    b_he *= b_decay
    b_ho *= b_decay
    b_v = b_beta * (b_v - (tl.sum(b_he * b_ke[None, :], axis=1) + tl.sum(b_ho * b_ko[None, :], axis=1)))
    b_he += b_v[:, None] * b_ke[None, :]
    b_ho += b_v[:, None] * b_ko[None, :]
    b_o = tl.sum(b_he * b_qe[None, :], axis=1) + tl.sum(b_ho * b_qo[None, :], axis=1)
    tl.store(o + (i_n * HV + i_hv) * V + o_v, b_o.to(o.dtype.element_ty))
    # fp32 → bf16 by the same rounding as .to(bfloat16), then packed back.
    b_we = b_he.to(tl.bfloat16).to(tl.int16, bitcast=True).to(tl.int32) & 65535
    b_wo = b_ho.to(tl.bfloat16).to(tl.int16, bitcast=True).to(tl.int32) << 16
    if STREAM:
        tl.store(p_h, b_we | b_wo, cache_modifier=".cs")
    else:
        tl.store(p_h, b_we | b_wo)


@triton.jit
def _decode_tma_dev_kernel(q, k, v, a, b, A_log, dt_bias, o, state, slots, scale,
                           H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                           BV: tl.constexpr):  # fmt: skip
    i_nh, i_p = tl.program_id(0), tl.program_id(1)
    i_n, i_hv = i_nh // HV, i_nh % HV
    i_h = i_hv // (HV // H)
    i_slot = tl.load(slots + i_n).to(tl.int64)
    if i_slot < 0:
        return
    b_decay, b_beta = _gates(a, b, A_log, dt_bias, i_n, i_hv, HV)
    b_q, b_k = _qk(q, k, i_n, i_h, scale, H, K)
    o_v = i_p * BV + tl.arange(0, BV)
    desc = tl.make_tensor_descriptor(
        state + i_slot * HV * V * K, shape=[HV * V, K], strides=[K, 1], block_shape=[BV, K]
    )
    row = i_hv * V + i_p * BV
    b_h = desc.load([row, 0]).to(tl.float32)
    b_v = tl.load(v + (i_n * HV + i_hv) * V + o_v).to(tl.float32)
    b_o, b_h = _update(b_h, b_q, b_k, b_v, b_decay, b_beta)
    tl.store(o + (i_n * HV + i_hv) * V + o_v, b_o.to(o.dtype.element_ty))
    desc.store([row, 0], b_h.to(desc.dtype))


@triton.jit
def _decode_tma_host_kernel(q, k, v, a, b, A_log, dt_bias, o, state_desc, slots, scale,
                            H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                            BV: tl.constexpr):  # fmt: skip
    """state_desc: the whole cache as [slots·HV·V, K] rows, block [BV, K]."""
    i_nh, i_p = tl.program_id(0), tl.program_id(1)
    i_n, i_hv = i_nh // HV, i_nh % HV
    i_h = i_hv // (HV // H)
    i_slot = tl.load(slots + i_n)
    if i_slot < 0:
        return
    b_decay, b_beta = _gates(a, b, A_log, dt_bias, i_n, i_hv, HV)
    b_q, b_k = _qk(q, k, i_n, i_h, scale, H, K)
    o_v = i_p * BV + tl.arange(0, BV)
    # TMA coordinates are int32: rows < 2³¹ up to 262144 slots at HV·V = 8192.
    row = ((i_slot * HV + i_hv) * V + i_p * BV).to(tl.int32)
    b_h = state_desc.load([row, 0]).to(tl.float32)
    b_v = tl.load(v + (i_n * HV + i_hv) * V + o_v).to(tl.float32)
    b_o, b_h = _update(b_h, b_q, b_k, b_v, b_decay, b_beta)
    tl.store(o + (i_n * HV + i_hv) * V + o_v, b_o.to(o.dtype.element_ty))
    state_desc.store([row, 0], b_h.to(state_desc.dtype))


@triton.jit
def _decode_split_kernel(q, k, v, a, b, A_log, dt_bias, o, state, slots, scale,
                         H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                         BV: tl.constexpr, KI: tl.constexpr, ALG: tl.constexpr):  # fmt: skip
    """The [BV, K] tile held as [BV, K/KI, KI]: Triton's coalescing orders the axes by contiguity, ties
    in axis order, so threads go KI/8 along a row's KI contiguous elements, then over rows (axis 0), and
    the K/KI pieces of a row (axis 1) repeat in registers. So each thread holds K/KI·8 elements of one row and a reduction over K takes log2(KI/8)
    shuffle rounds instead of log2(K/8). ALG: o and v' from the two reductions of the loaded S
    (o = d·Sq + (k·q)·v', v' = β(v − d·Sk)), no reduction of the updated S."""
    KO: tl.constexpr = K // KI
    i_nh, i_p = tl.program_id(0), tl.program_id(1)
    i_n, i_hv = i_nh // HV, i_nh % HV
    i_h = i_hv // (HV // H)
    i_slot = tl.load(slots + i_n).to(tl.int64)
    if i_slot < 0:
        return
    b_decay, b_beta = _gates(a, b, A_log, dt_bias, i_n, i_hv, HV)
    o_ko, o_ki = tl.arange(0, KO), tl.arange(0, KI)
    o_kk = o_ko[:, None] * KI + o_ki[None, :]  # [KO, KI]
    b_q = tl.load(q + (i_n * H + i_h) * K + o_kk).to(tl.float32)
    b_k = tl.load(k + (i_n * H + i_h) * K + o_kk).to(tl.float32)
    b_q = b_q * tl.rsqrt(tl.sum(tl.sum(b_q * b_q, axis=1), axis=0) + 1e-6) * scale
    b_k = b_k * tl.rsqrt(tl.sum(tl.sum(b_k * b_k, axis=1), axis=0) + 1e-6)
    o_v = i_p * BV + tl.arange(0, BV)
    o_h = o_v[:, None, None] * K + o_kk[None, :, :]  # [BV, KO, KI]
    o_h = tl.max_contiguous(tl.multiple_of(o_h, [K, KI, 8]), [1, 1, KI])
    p_h = state + (i_slot * HV + i_hv) * V * K + o_h
    b_h = tl.load(p_h).to(tl.float32)
    b_v = tl.load(v + (i_n * HV + i_hv) * V + o_v).to(tl.float32)
    b_k3, b_q3 = b_k[None, :, :], b_q[None, :, :]
    if ALG:
        b_hk = tl.sum(tl.sum(b_h * b_k3, axis=2), axis=1)
        b_hq = tl.sum(tl.sum(b_h * b_q3, axis=2), axis=1)
        b_kq = tl.sum(tl.sum(b_k * b_q, axis=1), axis=0)
        b_v = b_beta * (b_v - b_decay * b_hk)
        b_o = b_decay * b_hq + b_kq * b_v
        b_h = b_h * b_decay + b_k3 * b_v[:, None, None]
    else:
        b_h *= b_decay
        b_v = b_beta * (b_v - tl.sum(tl.sum(b_h * b_k3, axis=2), axis=1))
        b_h += b_k3 * b_v[:, None, None]
        b_o = tl.sum(tl.sum(b_h * b_q3, axis=2), axis=1)
    tl.store(o + (i_n * HV + i_hv) * V + o_v, b_o.to(o.dtype.element_ty))
    tl.store(p_h, b_h.to(state.dtype.element_ty))


@triton.jit
def _decode_lean_kernel(q, k, v, a, b, A_log, dt_bias, o, state, slots, scale,
                        H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                        BV: tl.constexpr, STREAM: tl.constexpr):  # fmt: skip
    """The tile stays in registers as loaded (bf16 pairs, half the registers of float32) and is widened
    twice: once for the two reductions of the loaded S (o = d·Sq + (k·q)·v', v' = β(v − d·Sk)), once
    for the update, so the float32 tile need not stay alive in between."""
    i_nh, i_p = tl.program_id(0), tl.program_id(1)
    i_n, i_hv = i_nh // HV, i_nh % HV
    i_h = i_hv // (HV // H)
    i_slot = tl.load(slots + i_n).to(tl.int64)
    if i_slot < 0:
        return
    b_decay, b_beta = _gates(a, b, A_log, dt_bias, i_n, i_hv, HV)
    b_q, b_k = _qk(q, k, i_n, i_h, scale, H, K)
    o_v = i_p * BV + tl.arange(0, BV)
    o_k = tl.arange(0, K)
    o_h = tl.max_contiguous(tl.multiple_of(o_v[:, None] * K + o_k[None, :], [K, 8]), [1, K])
    p_h = state + (i_slot * HV + i_hv) * V * K + o_h
    if STREAM:
        b_raw = tl.load(p_h, cache_modifier=".cg")
    else:
        b_raw = tl.load(p_h)
    b_v = tl.load(v + (i_n * HV + i_hv) * V + o_v).to(tl.float32)
    b_h = b_raw.to(tl.float32)
    b_hk = tl.sum(b_h * b_k[None, :], axis=1)
    b_hq = tl.sum(b_h * b_q[None, :], axis=1)
    b_v = b_beta * (b_v - b_decay * b_hk)
    b_o = b_decay * b_hq + tl.sum(b_k * b_q) * b_v
    tl.store(o + (i_n * HV + i_hv) * V + o_v, b_o.to(o.dtype.element_ty))
    # bf16 → float32 is the 16 bits placed in the top half of a word; as inline assembly that is not
    # pure, the compiler can neither merge it with the first widening nor move it before the reductions.
    b_h = tl.inline_asm_elementwise(
        "{ .reg .b16 z; mov.b16 z, 0; mov.b32 $0, {z, $1}; }",
        "=r,h",
        [b_raw],
        dtype=tl.float32,
        is_pure=False,
        pack=1,
    )
    b_h = b_h * b_decay + b_v[:, None] * b_k[None, :]
    if STREAM:
        tl.store(p_h, b_h.to(state.dtype.element_ty), cache_modifier=".cs")
    else:
        tl.store(p_h, b_h.to(state.dtype.element_ty))


@triton.jit
def _decode_walk_kernel(q, k, v, a, b, A_log, dt_bias, o, state_desc, slots, scale,
                        H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                        BV: tl.constexpr):  # fmt: skip
    """One program per (sequence, head) walks its V/BV tiles; with num_stages ≥ 2 Triton's pipeliner
    issues the TMA loads of the next tiles into shared memory while the current one is computed, so
    bytes in flight are no longer bounded by the registers a float32 tile takes."""
    i_nh = tl.program_id(0)
    i_n, i_hv = i_nh // HV, i_nh % HV
    i_h = i_hv // (HV // H)
    i_slot = tl.load(slots + i_n)
    if i_slot < 0:
        return
    b_decay, b_beta = _gates(a, b, A_log, dt_bias, i_n, i_hv, HV)
    b_q, b_k = _qk(q, k, i_n, i_h, scale, H, K)
    base = ((i_slot * HV + i_hv) * V).to(tl.int32)
    for v0 in tl.range(0, V, BV):
        o_v = v0 + tl.arange(0, BV)
        b_h = state_desc.load([base + v0, 0]).to(tl.float32)
        b_v = tl.load(v + (i_n * HV + i_hv) * V + o_v).to(tl.float32)
        b_o, b_h = _update(b_h, b_q, b_k, b_v, b_decay, b_beta)
        tl.store(o + (i_n * HV + i_hv) * V + o_v, b_o.to(o.dtype.element_ty))
        state_desc.store([base + v0, 0], b_h.to(state_desc.dtype))


@triton.jit
def _decode_persist_kernel(q, k, v, a, b, A_log, dt_bias, o, state_desc, slots, scale, N,
                           H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                           BV: tl.constexpr):  # fmt: skip
    """A fixed number of programs (a few per SM) walk every (sequence, head, BV rows) tile in turn,
    the pipelined TMA loads of the next tiles (slot index loaded a stage earlier) in flight meanwhile.
    A padded entry's tile is read from slot 0 and not written."""
    VB: tl.constexpr = V // BV
    for item in tl.range(tl.program_id(0), N * HV * VB, tl.num_programs(0)):
        i_nh, v0 = item // VB, (item % VB) * BV
        i_n, i_hv = i_nh // HV, i_nh % HV
        i_h = i_hv // (HV // H)
        i_slot = tl.load(slots + i_n)
        row = ((tl.maximum(i_slot, 0) * HV + i_hv) * V + v0).to(tl.int32)
        b_h = state_desc.load([row, 0]).to(tl.float32)
        b_decay, b_beta = _gates(a, b, A_log, dt_bias, i_n, i_hv, HV)
        b_q, b_k = _qk(q, k, i_n, i_h, scale, H, K)
        o_v = v0 + tl.arange(0, BV)
        b_v = tl.load(v + (i_n * HV + i_hv) * V + o_v).to(tl.float32)
        b_o, b_h = _update(b_h, b_q, b_k, b_v, b_decay, b_beta)
        if i_slot >= 0:
            tl.store(o + (i_n * HV + i_hv) * V + o_v, b_o.to(o.dtype.element_ty))
            state_desc.store([row, 0], b_h.to(state_desc.dtype))


def grid_of(variant: str, N: int, HV: int, V: int, BV: int, sms: int) -> tuple:
    if variant == "walk":
        return (N * HV,)
    if variant.startswith("persist"):
        return (min(N * HV * (V // BV), sms * int(variant[7:])),)
    return (N * HV, V // BV)


def kernel_of(variant: str):
    if variant.startswith("split"):
        return _decode_split_kernel, {"KI": int(variant[5:].split("_")[0]), "ALG": variant.endswith("_alg")}
    return {
        "ptr": (_decode_ptr_kernel, {"STREAM": 0}),
        "ptr_stream": (_decode_ptr_kernel, {"STREAM": 1}),
        "ptr_evict": (_decode_ptr_kernel, {"STREAM": 2}),
        "i32": (_decode_i32_kernel, {"STREAM": False}),
        "i32_stream": (_decode_i32_kernel, {"STREAM": True}),
        "tma_dev": (_decode_tma_dev_kernel, {}),
        "tma_host": (_decode_tma_host_kernel, {}),
        "lean": (_decode_lean_kernel, {"STREAM": False}),
        "lean_stream": (_decode_lean_kernel, {"STREAM": True}),
        "walk": (_decode_walk_kernel, {}),
        "persist2": (_decode_persist_kernel, {}),
        "persist4": (_decode_persist_kernel, {}),
        "persist8": (_decode_persist_kernel, {}),
    }[variant]


def launch_args(variant: str, inputs: dict, out: torch.Tensor, cache: torch.Tensor, BV: int) -> dict:
    """Every argument of the variant's kernel but num_warps/num_stages, on inputs (cuda or meta)."""
    K = cache.shape[-1]
    if variant.startswith("i32"):
        state = cache.view(torch.int32)
    elif variant in DESCRIPTOR_VARIANTS:
        from triton.tools.tensor_descriptor import TensorDescriptor

        state = TensorDescriptor.from_tensor(cache.view(-1, K), block_shape=[BV, K])
    else:
        state = cache
    _, flags = kernel_of(variant)
    if "KI" in flags:
        flags["KI"] = min(flags["KI"], K)  # the interpreter's tiny K
    H, HV, V = inputs["q"].shape[2], cache.shape[1], cache.shape[2]
    if variant.startswith("persist"):
        flags = {**flags, "N": inputs["q"].shape[1]}
    return dict(
        q=inputs["q"], k=inputs["k"], v=inputs["v"], a=inputs["g"], b=inputs["beta"], A_log=inputs["A_log"],
        dt_bias=inputs["dt_bias"], o=out, state=state, slots=inputs["ssm_state_indices"], scale=K**-0.5,
        H=H, HV=HV, K=K, V=V, BV=BV, **flags,
    )  # fmt: skip


def configs(bvs, warps_list, stage_list, K: int = 128, V: int = 128):
    """(BV, num_warps, num_stages) inside the package's register bounds: 32·w ≤ K·BV ≤ 128·32·w."""
    for BV, warps, stages in itertools.product(bvs, warps_list, stage_list):
        if BV <= V and 32 * warps <= K * BV <= 128 * 32 * warps:
            yield BV, warps, stages


def _call(variant: str, args: dict, grid, warps: int, stages: int) -> None:
    kernel, _ = kernel_of(variant)
    args = dict(args)
    if variant in DESCRIPTOR_VARIANTS:
        args["state_desc"] = args.pop("state")
    kernel[grid](**args, num_warps=warps, num_stages=stages)


def _warmup(variant: str, args: dict, warps: int, stages: int):
    kernel, _ = kernel_of(variant)
    args = dict(args)
    if variant in DESCRIPTOR_VARIANTS:
        args["state_desc"] = args.pop("state")
    return kernel.warmup(**args, grid=(1,), num_warps=warps, num_stages=stages)


def _ptx_summary(ptx: str) -> str:
    """Counts of the PTX's global and shared memory, TMA, shuffle and barrier instructions, e.g.
    ld.global.v4.b32×8."""
    counts: dict[str, int] = {}
    for m in re.finditer(
        r"\b(ld\.global[\w.]*|st\.global[\w.]*|cp\.async\.bulk\.tensor[\w.:]*|shfl[\w.]*|bar\.sync|ld\.shared[\w.]*)",
        ptx,
    ):
        op = m.group(1)
        counts[op] = counts.get(op, 0) + 1
    return " ".join(f"{op}×{n}" for op, n in sorted(counts.items()))


def _meta_inputs(N: int, H: int, HV: int, K: int, V: int) -> tuple[dict, torch.Tensor, torch.Tensor]:
    from gdn_kernels.fused_recurrent import SPEC_GATED

    key = SPEC_GATED.key(dtype="bfloat16", H=H, HV=HV, K=K, V=V, N=N, state_dtype="bfloat16",
                         state_layout="vk")  # fmt: skip
    inputs = SPEC_GATED.make_inputs(key, "meta", 0)
    out = torch.empty(N, HV, V, device="meta", dtype=torch.bfloat16)
    return inputs, out, inputs["initial_state"]


def compile_one(job: tuple) -> tuple:
    """Compile one (variant, BV, warps, stages) for compute capability cc on meta tensors, no GPU.
    Returns (job, ok, seconds, shared bytes or error, PTX summary)."""
    variant, BV, warps, stages, cc, shape = job
    from gdn_kernels._launch import compile_only_driver

    inputs, out, cache = _meta_inputs(*shape)
    args = launch_args(variant, inputs, out, cache, BV)
    start = time.perf_counter()
    try:
        with compile_only_driver(cc):
            compiled = _warmup(variant, args, warps, stages)
    except Exception as e:
        first = str(e).strip().splitlines()
        return (
            job,
            False,
            time.perf_counter() - start,
            f"{type(e).__name__}: {first[-1] if first else ''}",
            "",
        )
    return job, True, time.perf_counter() - start, compiled.metadata.shared, _ptx_summary(compiled.asm["ptx"])


def compile_all(jobs: list[tuple], workers: int) -> list[tuple]:
    if workers <= 1:
        return [compile_one(job) for job in jobs]
    import multiprocessing

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(compile_one, jobs))


def run_compile_check(args, variants, grid) -> int:
    shape = (args.N, args.H, args.HV, 128, 128)
    jobs = [(var, BV, w, s, 90, shape) for var in variants for BV, w, s in grid]
    print(f"compile check for sm90 (no GPU), {len(jobs)} kernels, {args.jobs} processes", flush=True)
    failed = 0
    for (var, BV, w, s, _, _), ok, seconds, shared, ptx in compile_all(jobs, args.jobs):
        if ok:
            print(f"  ok    {var:10s} BV{BV:<3d} w{w} s{s}  shared {shared:6d} B  {seconds:5.2f} s  {ptx}")
        else:
            failed += 1
            print(f"  FAIL  {var:10s} BV{BV:<3d} w{w} s{s}  {shared}")
    print(f"{len(jobs) - failed} of {len(jobs)} compile", flush=True)
    return 1 if failed else 0


def reference_decode(inputs: dict, cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 o [N, HV, V] and new states [N, HV, V, K] of the gated decode, independent of Triton."""
    q, k, v = (inputs[n][0].double() for n in ("q", "k", "v"))  # [N, H, K], [N, HV, V]
    H, K = q.shape[1:]
    HV = v.shape[1]
    slots = inputs["ssm_state_indices"].long()
    x = inputs["g"][0].double() + inputs["dt_bias"].double()
    g = -torch.exp(inputs["A_log"].double()) * torch.where(x <= 20, torch.log1p(torch.exp(x)), x)
    beta = torch.sigmoid(inputs["beta"][0].double())
    q = q / torch.sqrt((q * q).sum(-1, keepdim=True) + 1e-6) * K**-0.5
    k = k / torch.sqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    q, k = q.repeat_interleave(HV // H, 1), k.repeat_interleave(HV // H, 1)  # [N, HV, K]
    S = cache[slots].double() * torch.exp(g)[..., None, None]  # [N, HV, V, K]
    u = beta[..., None] * (v - torch.einsum("nhvk,nhk->nhv", S, k))
    S = S + u[..., None] * k[..., None, :]
    return torch.einsum("nhvk,nhk->nhv", S, q), S


def run_interpret(variants, grid_bv) -> int:
    """Every variant at a tiny shape under the interpreter, against the float64 reference."""
    from bench_kernels import rel_err

    from gdn_kernels.fused_recurrent import SPEC_GATED

    N, H, HV, K, V = 3, 2, 4, 16, 32
    key = SPEC_GATED.key(dtype="bfloat16", H=H, HV=HV, K=K, V=V, N=N, state_dtype="bfloat16",
                         state_layout="vk")  # fmt: skip
    inputs = SPEC_GATED.make_inputs(key, "cpu", 0)
    slots = inputs["ssm_state_indices"].clone()
    slots[1] = -1  # a padded entry: no state touched
    inputs["ssm_state_indices"] = slots
    o_ref, s_ref = reference_decode(inputs, inputs["initial_state"])
    live = slots >= 0
    worst = 0.0
    for variant in variants:
        for BV in [bv for bv in grid_bv if bv <= V]:
            cache = inputs["initial_state"].clone()
            out = torch.zeros(N, HV, V, dtype=torch.bfloat16)
            args = launch_args(variant, inputs, out, cache, BV)
            try:
                _call(variant, args, grid_of(variant, N, HV, V, BV, 2), 1, 1)
            except Exception as e:
                print(f"  {variant:10s} BV{BV:<3d} interpreter FAILED: {type(e).__name__}: {e}")
                worst = float("inf")
                continue
            untouched = torch.equal(cache[slots[~live].long()], inputs["initial_state"][slots[~live].long()])
            other = torch.ones(cache.shape[0], dtype=torch.bool)
            other[slots[live].long()] = False
            untouched &= torch.equal(cache[other], inputs["initial_state"][other])
            e_o = rel_err(out[live], o_ref[live])
            e_s = rel_err(cache[slots[live].long()], s_ref[live])
            worst = max(worst, e_o, e_s)
            print(f"  {variant:10s} BV{BV:<3d} o err {e_o:.1e}  state err {e_s:.1e}  "
                  f"other slots untouched {untouched}")  # fmt: skip
            if not untouched:
                worst = float("inf")
    print(f"worst rel err vs float64 {worst:.1e} ({'ok' if worst < 1e-2 else 'FAILED'})")
    return 0 if worst < 1e-2 else 1


def run_gpu(args, variants, grid) -> int:
    from bench_kernels import copy_bandwidth, rel_err, time_graph

    from gdn_kernels._tables import resolve_config
    from gdn_kernels.fused_recurrent import SPEC_GATED

    N, H, HV, K, V = args.N, args.H, args.HV, 128, 128
    if args.jobs > 1:
        # Into Triton's on-disk cache under the launch's key: the loop below then only loads binaries.
        cc = torch.cuda.get_device_capability()
        cc = cc[0] * 10 + cc[1]
        jobs = [(var, BV, w, s, cc, (N, H, HV, K, V)) for var in variants for BV, w, s in grid]
        start = time.perf_counter()
        failed = [r for r in compile_all(jobs, args.jobs) if not r[1]]
        print(f"compiled {len(jobs)} kernels in {time.perf_counter() - start:.1f} s, {len(failed)} failed")
        for (var, BV, w, s, *_), _, _, error, _ in failed:
            print(f"  FAIL {var} BV{BV} w{w} s{s}: {error}")
    # Device-side descriptors (tma_dev) are written to global scratch memory the launch allocates.
    triton.set_allocator(lambda size, alignment, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
    key = SPEC_GATED.key(dtype="bfloat16", H=H, HV=HV, K=K, V=V, N=N, state_dtype="bfloat16",
                         state_layout="vk")  # fmt: skip
    inputs = SPEC_GATED.make_inputs(key, "cuda", 0)
    state_bytes = 2 * N * HV * K * V * 2
    bw = copy_bandwidth()
    floor = state_bytes / bw * 1e3
    print(
        f"copy bandwidth {bw / 1e12:.2f} TB/s; state bytes {state_bytes / 1e6:.1f} MB -> floor {floor:.4f} ms"
    )

    table = resolve_config(SPEC_GATED, key, torch.device("cuda"))
    outputs = SPEC_GATED.make_outputs(inputs)
    fn = lambda: SPEC_GATED.launch(inputs, outputs, table)
    fn()
    torch.cuda.synchronize()
    o_ref, s_ref = outputs["o"].reshape(N, HV, V).clone(), outputs["final_state"].clone()
    package_ms = time_graph(fn, args.reps)
    print(f"{'variant':10s}  {'config':12s}  {'ms':>8s}  {'% copy':>6s}  rel err vs package")
    print(f"{'package':10s}  {table.label:12s}  {package_ms:8.4f}  {100 * floor / package_ms:6.1f}  -")
    slots = inputs["ssm_state_indices"].long()
    best: dict[str, tuple[float, str, float]] = {}
    cache = torch.empty_like(inputs["initial_state"])
    out = torch.empty(N, HV, V, device="cuda", dtype=torch.bfloat16)
    for variant in variants:
        for BV, warps, stages in grid:
            label = f"BV{BV} w{warps} s{stages}"
            cache.copy_(inputs["initial_state"])
            out.zero_()
            call_args = launch_args(variant, inputs, out, cache, BV)
            grid_ = grid_of(variant, N, HV, V, BV, torch.cuda.get_device_properties().multi_processor_count)
            call = lambda a=call_args, g=grid_, w=warps, s=stages, var=variant: _call(var, a, g, w, s)
            try:
                call()
                torch.cuda.synchronize()
            except Exception as e:
                print(f"{variant:10s}  {label:12s}  FAILED {type(e).__name__}: {str(e).splitlines()[0][:80]}")
                continue
            err = max(rel_err(out, o_ref), rel_err(cache[slots], s_ref))
            ms = time_graph(call, args.reps)
            mark = "" if err < 1e-2 else "  WRONG"
            print(
                f"{variant:10s}  {label:12s}  {ms:8.4f}  {100 * floor / ms:6.1f}  {err:.1e}{mark}", flush=True
            )
            if err < 1e-2 and (variant not in best or ms < best[variant][0]):
                best[variant] = (ms, label, err)
    parts = [f"{var} {label} {100 * floor / ms:.1f} % ({ms:.4f} ms)" for var, (ms, label, _) in best.items()]
    print(f"best: {'; '.join(parts)}; package table {table.label} {100 * floor / package_ms:.1f} % "
          f"({package_ms:.4f} ms)")  # fmt: skip
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )  # fmt: skip
    parser.add_argument("--N", type=int, default=256)
    parser.add_argument("--HV", type=int, default=64)
    parser.add_argument("--H", type=int, default=16)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated of {', '.join(VARIANTS)}"
    )
    parser.add_argument("--bv", default="8,16,32,64", help="BV values")
    parser.add_argument("--warps", default="1,2,4,8", help="num_warps values")
    parser.add_argument("--stages", default="1,2,3", help="num_stages values")
    parser.add_argument(
        "--jobs", type=int, default=1, help="processes compiling ahead (GPU run, --compile-check)"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--compile-check", action="store_true", help="compile every variant × config for sm90, no GPU"
    )
    mode.add_argument(
        "--interpret", action="store_true", help="check every variant's math under TRITON_INTERPRET=1"
    )
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {VARIANTS}")
    ints = lambda s: [int(x) for x in s.split(",") if x]
    grid = list(configs(ints(args.bv), ints(args.warps), ints(args.stages)))
    if args.interpret:
        if os.environ.get("TRITON_INTERPRET") != "1":
            parser.error(
                "--interpret needs TRITON_INTERPRET=1 in the environment (set before Triton is imported)"
            )
        return run_interpret(variants, ints(args.bv))
    if args.compile_check:
        return run_compile_check(args, variants, grid)
    return run_gpu(args, variants, grid)


if __name__ == "__main__":
    sys.exit(main())
