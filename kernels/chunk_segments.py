"""Context-parallel state pass: chunk_state's h, v_new and final state, with every sequence cut into SEG
segments of whole chunks whose work runs side by side.

chunk_state walks a sequence's chunks one after another in N·HV·V/BV programs: 16 at 2/8 heads with BV
64, on 132 SMs. Over a segment the recurrence is affine in the state it starts from,

    S_end = M·S_in + c,   M = Π over the segment's chunks of (exp(gc_l)·I − (k·exp(gc_l − gc))ᵀ·w),

with M [K, K] and c the segment's end state from zero. So three launches do the walk:
  1. per (segment, head, column block): c and M at once, by chunk_state's own recurrence over the
     augmented columns [c | M], starting from [0 | I] with values [u | 0];
  2. per (sequence, head, V block): the segments' start states in order, S_{s+1} = M_s·S_s + c_s, and
     the final state (a few K×K products per segment, in 3×tf32 for float32 accuracy);
  3. per (segment, head, V block): chunk_state's walk from the segment's start state, storing h and
     v_new for the output kernel.
Launches 1 and 3 have SEG times chunk_state's programs, each walking 1/SEG of the chunks; the price is
launch 1's extra K columns and launch 2's short sequential pass. Sequence n's segments hold
ceil(NT_n / SEG) chunks each (the last ones fewer or none), so the bookkeeping stays on the device.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._launch import INTERPRETED, cdiv, launch
from ._spec import CHUNK_SIZE, Config, pow2_ceil
from ._state_io import JIT_FUNCTIONS as STATE_IO_JIT_FUNCTIONS
from ._state_io import load_state, state_block, store_final_state
from .chunk_state import _chunk_state_step, _dot_operand


@triton.jit
def _segment_bounds(i_n, i_s, T, cu_seqlens, chunk_offsets, SEG: tl.constexpr, BT: tl.constexpr,
                    IS_VARLEN: tl.constexpr):  # fmt: skip
    """(first token, tokens, first h row, first chunk, end chunk) of segment i_s of sequence i_n."""
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        T_seq = tl.load(cu_seqlens + i_n + 1) - tl.load(cu_seqlens + i_n)
        boh = tl.load(chunk_offsets + i_n).to(tl.int64)
    else:
        bos = i_n.to(tl.int64) * T
        T_seq = T
        boh = i_n.to(tl.int64) * tl.cdiv(T, BT)
    NT = tl.cdiv(T_seq, BT)
    per_segment = tl.cdiv(NT, SEG)
    c_start = tl.minimum(i_s * per_segment, NT)
    c_end = tl.minimum(c_start + per_segment, NT)
    return bos, T_seq, boh, c_start, c_end


@triton.jit
def _transition_step(b_h, i_t, o_c, w_seq, u_seq, k_seq, gc_seq, T_seq, IS_M,
                     H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                     BT: tl.constexpr, BK: tl.constexpr, INTERPRETED: tl.constexpr):  # fmt: skip
    """chunk_state's state update on one column block of [c | M]: values u there, zeros under M."""
    dtype = k_seq.dtype.element_ty
    o_t = i_t * BT + tl.arange(0, BT)
    m_t = o_t < T_seq
    o_k = tl.arange(0, BK)
    b_w = tl.load(
        w_seq + o_t[:, None] * HV * K + o_k[None, :], mask=m_t[:, None] & (o_k[None, :] < K), other=0.0
    )
    b_u = tl.load(
        u_seq + o_t[:, None] * HV * V + o_c[None, :],
        mask=m_t[:, None] & (o_c[None, :] < V) & (IS_M == 0),
        other=0.0,
    ).to(tl.float32)
    b_kt = tl.load(
        k_seq + o_t[None, :] * H * K + o_k[:, None], mask=m_t[None, :] & (o_k[:, None] < K), other=0.0
    )
    b_v = b_u - tl.dot(_dot_operand(b_w, dtype, INTERPRETED), _dot_operand(b_h, dtype, INTERPRETED))
    b_g = tl.load(gc_seq + o_t * HV, mask=m_t, other=0.0)
    b_g_last = tl.load(gc_seq + (tl.minimum(i_t * BT + BT, T_seq) - 1) * HV)
    b_v = b_v * tl.where(m_t, tl.exp(b_g_last - b_g), 0.0)[:, None]
    b_kt = _dot_operand(b_kt, dtype, INTERPRETED)
    return b_h * tl.exp(b_g_last) + tl.dot(b_kt, _dot_operand(b_v, dtype, INTERPRETED))


@triton.jit
def _segment_transition_kernel(
    k, w, u, gc, seg, cu_seqlens, chunk_offsets, T,
    H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, SEG: tl.constexpr, IS_VARLEN: tl.constexpr,
    INTERPRETED: tl.constexpr,
):  # fmt: skip
    # Column blocks 0 .. cdiv(V, BV) − 1 hold c, the next cdiv(K, BV) hold M: a block is one or the other.
    i_c, i_nsh = tl.program_id(0), tl.program_id(1)
    i_n, i_s, i_hv = i_nsh // (SEG * HV), (i_nsh // HV) % SEG, i_nsh % HV
    i_h = i_hv // (HV // H)
    bos, T_seq, _, c_start, c_end = _segment_bounds(
        i_n, i_s, T, cu_seqlens, chunk_offsets, SEG, BT, IS_VARLEN
    )
    NV = tl.cdiv(V, BV)
    IS_M = (i_c >= NV).to(tl.int32)
    o_k = tl.arange(0, BK)
    o_c = (i_c - IS_M * NV) * BV + tl.arange(0, BV)  # column within c (V) or within M (K)
    b_h = tl.where((o_k[:, None] == o_c[None, :]) & (IS_M == 1), 1.0, 0.0).to(tl.float32)
    k_seq = k + (bos * H + i_h) * K
    w_seq = w + (bos * HV + i_hv) * K
    u_seq = u + (bos * HV + i_hv) * V
    gc_seq = gc + bos * HV + i_hv
    if INTERPRETED:
        i_t = c_start
        while i_t < c_end:
            b_h = _transition_step(
                b_h, i_t, o_c, w_seq, u_seq, k_seq, gc_seq, T_seq, IS_M, H, HV, K, V, BT, BK, True
            )
            i_t += 1
    else:
        for i_t in range(c_start, c_end):
            b_h = _transition_step(
                b_h, i_t, o_c, w_seq, u_seq, k_seq, gc_seq, T_seq, IS_M, H, HV, K, V, BT, BK, False
            )
    # seg [N·SEG, HV, K, V + K]: c in columns 0 .. V − 1, M in V .. V + K − 1.
    width = IS_M * K + (1 - IS_M) * V
    p_seg = seg + ((i_n * SEG + i_s).to(tl.int64) * HV + i_hv) * K * (V + K) + IS_M * V
    tl.store(
        p_seg + o_k[:, None] * (V + K) + o_c[None, :], b_h, mask=(o_k[:, None] < K) & (o_c[None, :] < width)
    )


@triton.jit
def _segment_combine_kernel(
    seg, h0, hin, ht, cu_seqlens, state_indices, T, stride_h0,
    HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, SEG: tl.constexpr, USE_INITIAL_STATE: tl.constexpr, FINAL_MODE: tl.constexpr,
    USE_STATE_INDICES: tl.constexpr, STATE_VK: tl.constexpr, IS_VARLEN: tl.constexpr,
):  # fmt: skip
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_hv = i_nh // HV, i_nh % HV
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    # The caller's state, read once and written once (kernels/_state_io.py).
    o_s, m_s, i_slot = state_block(i_n, i_hv, i_v, state_indices, K, V, BK, BV, USE_STATE_INDICES, STATE_VK)
    b_h = load_state(h0, i_slot, stride_h0, o_s, m_s, BK, BV, USE_INITIAL_STATE)
    for i_s in range(SEG):  # SEG is a constexpr: the interpreter takes this loop too
        row = (i_n * SEG + i_s).to(tl.int64) * HV + i_hv
        tl.store(hin + row * K * V + o_k[:, None] * V + o_v[None, :], b_h, mask=m_s)
        p_seg = seg + row * K * (V + K)
        b_c = tl.load(p_seg + o_k[:, None] * (V + K) + o_v[None, :], mask=m_s, other=0.0)
        m_m = (o_k[:, None] < K) & (o_k[None, :] < K)
        b_m = tl.load(p_seg + V + o_k[:, None] * (V + K) + o_k[None, :], mask=m_m, other=0.0)
        # An empty segment (fewer chunks than segments) holds M = I, c = 0 from launch 1: no change.
        b_h = tl.dot(b_m, b_h, input_precision="tf32x3") + b_c
    store_final_state(b_h, ht, h0, i_n, i_slot, stride_h0, o_s, m_s, HV, K, V, FINAL_MODE)


@triton.jit
def _segment_state_kernel(
    k, w, u, gc, hin, h, v_new, cu_seqlens, chunk_offsets, T,
    H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, SEG: tl.constexpr, IS_VARLEN: tl.constexpr,
    INTERPRETED: tl.constexpr,
):  # fmt: skip
    i_v, i_nsh = tl.program_id(0), tl.program_id(1)
    i_n, i_s, i_hv = i_nsh // (SEG * HV), (i_nsh // HV) % SEG, i_nsh % HV
    i_h = i_hv // (HV // H)
    bos, T_seq, boh, c_start, c_end = _segment_bounds(
        i_n, i_s, T, cu_seqlens, chunk_offsets, SEG, BT, IS_VARLEN
    )
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    row = (i_n * SEG + i_s).to(tl.int64) * HV + i_hv
    b_h = tl.load(
        hin + row * K * V + o_k[:, None] * V + o_v[None, :],
        mask=(o_k[:, None] < K) & (o_v[None, :] < V),
        other=0.0,
    )
    h_seq = h + (boh * HV + i_hv) * K * V
    k_seq = k + (bos * H + i_h) * K
    w_seq = w + (bos * HV + i_hv) * K
    u_seq = u + (bos * HV + i_hv) * V
    v_new_seq = v_new + (bos * HV + i_hv) * V
    gc_seq = gc + bos * HV + i_hv
    if INTERPRETED:
        i_t = c_start
        while i_t < c_end:
            b_h = _chunk_state_step(b_h, i_t, i_v, h_seq, k_seq, w_seq, u_seq, v_new_seq, gc_seq, T_seq,
                                    H, HV, K, V, BT, BK, BV, True)  # fmt: skip
            i_t += 1
    else:
        for i_t in range(c_start, c_end):
            b_h = _chunk_state_step(b_h, i_t, i_v, h_seq, k_seq, w_seq, u_seq, v_new_seq, gc_seq, T_seq,
                                    H, HV, K, V, BT, BK, BV, False)  # fmt: skip


JIT_FUNCTIONS = (
    *STATE_IO_JIT_FUNCTIONS,
    _segment_bounds,
    _transition_step,
    _segment_transition_kernel,
    _segment_combine_kernel,
    _segment_state_kernel,
)


def segment_scratch(inputs: dict, segments: int) -> dict[str, torch.Tensor]:
    """The float32 buffers of launches 1 → 2 → 3: [c | M] per segment and each segment's start state."""
    k, u, cu_seqlens = inputs["k"], inputs["u"], inputs.get("cu_seqlens")
    B, _, _, K = k.shape
    HV, V = u.shape[2], u.shape[3]
    N = B if cu_seqlens is None else cu_seqlens.numel() - 1
    return {
        "seg": torch.empty(N * segments, HV, K, V + K, dtype=torch.float32, device=k.device),
        "hin": torch.empty(N * segments, HV, K, V, dtype=torch.float32, device=k.device),
    }


# Columns of the state per program in launch 2. Each of its steps is a [K, K] x [K, width] product in
# 3xtf32, sequential over the segments, with only N·HV·V/width programs: at the structure's BV 64 a
# step took about 5 us on an H200 (SEG 8 at 2/8 heads: 42 us of a 170 us pass), dominated by the
# product's 6 MFLOP on one SM. Width 16 cuts each step's product 4x and gives 4x the programs; M is
# read by more programs, from L2 (8 MB at 2/8 heads, SEG 8).
COMBINE_BV = 16


@functools.cache
def _kernel_config(config: Config) -> Config:
    """The segment kernels' launch config: the structure's FUSED is no kernel argument."""
    return Config.of(**{p: v for p, v in config.params if p != "FUSED"})


@functools.cache
def _combine_config(config: Config) -> Config:
    """Launch 2's config: the structure's warps and stages at COMBINE_BV columns."""
    return Config.of(**{**dict(_kernel_config(config).params), "BV": COMBINE_BV})


def launch_segmented_state(inputs: dict, outputs: dict, config: Config) -> None:
    """chunk_state's h, v_new (and final state) into `outputs`, in config["SEG"] segments per sequence;
    the scratch buffers are taken from `outputs` ("seg", "hin") where present."""
    k, w, u, gc = inputs["k"], inputs["w"], inputs["u"], inputs["gc"]
    cu_seqlens, chunk_offsets = inputs.get("cu_seqlens"), inputs.get("chunk_offsets")
    initial_state, state_indices = inputs.get("initial_state"), inputs.get("state_indices")
    final_state = outputs.get("final_state")
    in_place = bool(inputs.get("inplace_final_state", False))
    SEG, BV = config["SEG"], config["BV"]
    B, T, H, K = k.shape
    HV, V = u.shape[2], u.shape[3]
    N = B if cu_seqlens is None else cu_seqlens.numel() - 1
    scratch = outputs if "seg" in outputs else segment_scratch(inputs, SEG)
    launch_config = _kernel_config(config)
    common = dict(
        T=T, HV=HV, K=K, V=V, BT=CHUNK_SIZE, BK=max(16, pow2_ceil(K)), IS_VARLEN=cu_seqlens is not None
    )
    walk = dict(
        k=k, w=w, u=u, gc=gc, cu_seqlens=cu_seqlens, chunk_offsets=chunk_offsets, H=H, INTERPRETED=INTERPRETED
    )
    launch(
        _segment_transition_kernel,
        (cdiv(V, BV) + cdiv(K, BV), N * SEG * HV),
        launch_config,
        seg=scratch["seg"],
        **walk,
        **common,
    )
    launch(
        _segment_combine_kernel,
        (cdiv(V, COMBINE_BV), N * HV),
        _combine_config(config),
        seg=scratch["seg"],
        h0=initial_state,
        hin=scratch["hin"],
        ht=None if in_place else final_state,
        cu_seqlens=cu_seqlens,
        state_indices=state_indices,
        stride_h0=initial_state.stride(0) if initial_state is not None else 0,
        USE_INITIAL_STATE=initial_state is not None,
        FINAL_MODE=2 if in_place else int(final_state is not None),
        USE_STATE_INDICES=state_indices is not None,
        STATE_VK=inputs.get("state_layout", "kv") == "vk",
        **common,
    )
    launch(
        _segment_state_kernel,
        (cdiv(V, BV), N * SEG * HV),
        launch_config,
        hin=scratch["hin"],
        h=outputs["h"],
        v_new=outputs["v_new"],
        **walk,
        **common,
    )
