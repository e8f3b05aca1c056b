"""Decode: the gated delta rule token by token, the K×V state of each (sequence, value head) in registers.

Per token: S ← exp(g)·S; v' = β(v − Sᵀk); S ← S + k⊗v'; o = Sᵀ(scale·q). At one token per sequence the
kernel is bound by the state: K·V float32 per (sequence, value head), read once and written once
(256 sequences × 64 heads × 128×128: 2.1 GB, 0.50 ms at the H200's 4.3 TB/s). Everything else (q, k, v,
o, gates) is under 0.1 % of that. So one program per (sequence, value head, BV columns) loads its
[K, BV] slice of the state with 16-byte loads of contiguous V-rows, runs its tokens, stores it, and
nothing more; BV sets how many programs are in flight to cover memory latency.

Serving engines keep states in a cache of slots: `ssm_state_indices[n]` names the slot of sequence n,
a negative index marks a padded batch entry (zeros out, no state touched), and `inplace_final_state`
writes the final state back into that slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import triton
import triton.language as tl

from . import _varlen
from ._launch import INTERPRETED, cdiv, launch
from ._spec import (
    Config,
    Constraint,
    KernelSpec,
    Key,
    Param,
    SearchSpace,
    pow2_ceil,
    randn,
    sequence_bucket,
    stages,
    warps,
)
from ._tables import resolve_config
from .reference import gated_delta_rule_reference

# Past 256 a whole K-column of the state ([K, BV] fp32 at BV ≥ 32) no longer fits one program's
# registers; GDN models use K = 128.
MAX_HEAD_DIM = 256
# fp32 state elements one thread may hold: 128 of the 255 registers, the rest for q, k, v and addresses.
MAX_STATE_PER_THREAD = 128

SPACE = SearchSpace(
    params=(
        # Columns of the state per program. BV 8 moves 32-byte row pieces (one sector, FLA's choice);
        # BV ≥ 32 moves whole 128-byte lines but launches 4× fewer programs.
        Param("BV", (8, 16, 32, 64, 128), "state columns per program", lo=8, hi=256),
        warps(1, 2, 4, 8),
        # Pipelining only overlaps the next token's q/k/v loads: useful with a few tokens per sequence
        # (speculative decoding), neutral at one.
        stages(1, 2, 3),
    ),
    constraints=(
        Constraint(
            "BV ≤ pow2(V): wider tiles only mask lanes off", lambda c, k: c["BV"] <= pow2_ceil(k["V"])
        ),
        Constraint(
            f"pow2(K)·BV / (32·num_warps) ≤ {MAX_STATE_PER_THREAD}: fp32 state per thread, past it registers spill",
            lambda c, k: pow2_ceil(k["K"]) * c["BV"] <= MAX_STATE_PER_THREAD * 32 * c["num_warps"],
        ),
        Constraint(
            "pow2(K)·BV ≥ 32·num_warps: every thread holds part of the state, none replicates another",
            lambda c, k: pow2_ceil(k["K"]) * c["BV"] >= 32 * c["num_warps"],
        ),
    ),
)
# [128, 32] fp32 state slice = 16 KiB and 32 registers per thread at 4 warps; rows of 128 bytes.
# Valid for K ≤ 256 (64 per thread) and any V ≥ 32; smaller V is masked, still correct.
DEFAULT = Config.of(BV=32, num_warps=4, num_stages=1)


# Triton 3.6's interpreter (TRITON_INTERPRET=1: CPU tests, smoke sweeps) cannot run range() over a
# bound loaded from memory with numpy ≥ 2.4 (its scalars are 1-element arrays that int() refuses), so
# there the token loop runs as a while loop. Compiled kernels keep the for loop, which num_stages
# software-pipelines; they never see INTERPRETED set.

# Where the final state goes (constexpr FINAL_MODE) and where each token's state goes (TOKEN_MODE).
FINAL_NONE, FINAL_NEW, FINAL_IN_PLACE = 0, 1, 2  # nowhere; ht[n]; back into the slot it was read from
# nowhere; the cache slot indices[n, t] (speculative decoding); ht[token] (one state per token);
# buffer[rows[n], t] (target verify of a draft)
TOKENS_NONE, TOKENS_TO_SLOTS, TOKENS_TO_ROWS, TOKENS_TO_BUFFER = 0, 1, 2, 3
LAYOUTS = (
    "kv",
    "vk",
)  # [.., K, V]: V contiguous (this package, FLA); [.., V, K]: K contiguous (vLLM, SGLang)
STATE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _is_padding(slot, NULL_SLOT: tl.constexpr):
    """A slot index that names no slot: negative, or the engine's null block (NULL_SLOT ≥ 0)."""
    return (slot < 0) | (slot == NULL_SLOT)


@triton.jit
def _token_step(
    b_h,
    i,
    t,
    i_n,
    q,
    k,
    v,
    g,
    beta,
    o,
    hs,
    state_indices,
    buffer_rows,
    b_a_log,
    b_dt_bias,
    scale,
    softplus_beta,
    softplus_threshold,
    stride_q,
    stride_k,
    stride_v,
    stride_o,
    stride_g,
    stride_beta,
    stride_hs,
    stride_indices,
    slot_columns,
    buffer_tokens,
    i_h,
    i_hv,
    o_k,
    o_v,
    o_h,
    HV: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    USE_QK_L2NORM: tl.constexpr,
    USE_GATE: tl.constexpr,
    USE_BETA_SIGMOID: tl.constexpr,
    TOKEN_MODE: tl.constexpr,
    NULL_SLOT: tl.constexpr,
):
    """Token i (global row t) of sequence i_n on the [BK, BV] state slice b_h: stores o, and the state
    where TOKEN_MODE sends it, and returns the new state."""
    m_k, m_v = o_k < K, o_v < V
    m_h = m_k[:, None] & m_v[None, :]
    b_q = tl.load(q + t * stride_q + i_h * K + o_k, mask=m_k, other=0.0).to(tl.float32)
    b_k = tl.load(k + t * stride_k + i_h * K + o_k, mask=m_k, other=0.0).to(tl.float32)
    b_v = tl.load(v + t * stride_v + i_hv * V + o_v, mask=m_v, other=0.0).to(tl.float32)
    b_g = tl.load(g + t * stride_g + i_hv).to(tl.float32)
    b_beta = tl.load(beta + t * stride_beta + i_hv).to(tl.float32)
    if USE_GATE:
        # g = −exp(A_log)·softplus(a + dt_bias), softplus linear past the threshold as torch's is.
        b_x = b_g + b_dt_bias
        b_bx = softplus_beta * b_x
        b_softplus = tl.where(b_bx <= softplus_threshold, tl.log(1.0 + tl.exp(b_bx)) / softplus_beta, b_x)
        b_g = -tl.exp(b_a_log) * b_softplus
    if USE_BETA_SIGMOID:
        b_beta = tl.sigmoid(b_beta)
    if USE_QK_L2NORM:
        # Same epsilon as l2norm(): a zero key stays zero instead of becoming NaN.
        b_q = b_q * tl.rsqrt(tl.sum(b_q * b_q) + 1e-6)
        b_k = b_k * tl.rsqrt(tl.sum(b_k * b_k) + 1e-6)
    b_q = b_q * scale

    b_h *= tl.exp(b_g)
    b_v = b_beta * (b_v - tl.sum(b_h * b_k[:, None], axis=0))
    b_h += b_k[:, None] * b_v[None, :]
    b_o = tl.sum(b_h * b_q[:, None], axis=0)
    tl.store(o + t * stride_o + i_hv * V + o_v, b_o.to(o.dtype.element_ty), mask=m_v)

    if TOKEN_MODE == 1:  # TOKENS_TO_SLOTS
        if i < slot_columns:
            i_slot = tl.load(state_indices + i_n * stride_indices + i).to(tl.int64)
            if (i_slot >= 0) & (i_slot != NULL_SLOT):
                tl.store(hs + i_slot * stride_hs + o_h, b_h.to(hs.dtype.element_ty), mask=m_h)
    elif TOKEN_MODE == 2:  # TOKENS_TO_ROWS
        tl.store(hs + t * stride_hs + o_h, b_h.to(hs.dtype.element_ty), mask=m_h)
    elif TOKEN_MODE == 3:  # TOKENS_TO_BUFFER
        i_row = tl.load(buffer_rows + i_n).to(tl.int64)
        if (i_row >= 0) & (i < buffer_tokens):
            tl.store(
                hs + (i_row * buffer_tokens + i) * stride_hs + o_h, b_h.to(hs.dtype.element_ty), mask=m_h
            )
    return b_h


@triton.jit
def _fused_recurrent_kernel(
    q,
    k,
    v,
    g,
    beta,
    o,
    h0,
    ht,
    hs,
    cu_seqlens,
    state_indices,
    num_accepted_tokens,
    buffer_rows,
    A_log,
    dt_bias,
    scale,
    softplus_beta,
    softplus_threshold,
    T,
    stride_q,
    stride_k,
    stride_v,
    stride_o,
    stride_g,
    stride_beta,
    stride_h0,
    stride_hs,
    stride_indices,
    slot_columns,
    buffer_tokens,
    H: tl.constexpr,
    HV: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BK: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr,
    FINAL_MODE: tl.constexpr,
    TOKEN_MODE: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    USE_STATE_INDICES: tl.constexpr,
    USE_ACCEPTED_TOKENS: tl.constexpr,
    USE_QK_L2NORM: tl.constexpr,
    USE_GATE: tl.constexpr,
    USE_BETA_SIGMOID: tl.constexpr,
    STATE_VK: tl.constexpr,
    NULL_SLOT: tl.constexpr,
    INTERPRETED: tl.constexpr,
    BV: tl.constexpr,
):
    # Grid (N·HV, cdiv(V, BV)): sequences × heads go on axis 0, which allows 2³¹ programs (axis 1: 65535).
    i_nh, i_v = tl.program_id(0), tl.program_id(1)
    i_n, i_hv = i_nh // HV, i_nh % HV
    i_h = i_hv // (HV // H)
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    else:
        bos = i_n.to(tl.int64) * T
        eos = bos + T

    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_h = m_k[:, None] & m_v[None, :]
    # Offsets within one head's state, whichever dimension is contiguous; the tile is [BK, BV] either
    # way and Triton's coalescing follows the contiguous one. The slot offset is int64: a cache of
    # 2000 slots × 64 heads × 128×128 is 2.1e9 elements, past 2³¹.
    if STATE_VK:
        o_h = i_hv * K * V + o_v[None, :] * K + o_k[:, None]
    else:
        o_h = i_hv * K * V + o_k[:, None] * V + o_v[None, :]
    state_size = HV * K * V

    if USE_STATE_INDICES:
        column = 0
        if USE_ACCEPTED_TOKENS:
            # Speculative decoding: the state to start from is the one after the last accepted token.
            # A count outside 1..columns (not checked on the host: that would sync) marks the entry
            # padded, as vLLM's kernel treats it.
            column = tl.load(num_accepted_tokens + i_n).to(tl.int64) - 1
            column = tl.where((column >= 0) & (column < slot_columns), column, -1)
        i_slot = tl.load(state_indices + i_n * stride_indices + tl.maximum(column, 0)).to(tl.int64)
        if USE_ACCEPTED_TOKENS:
            i_slot = tl.where(column >= 0, i_slot, -1)
        if _is_padding(i_slot, NULL_SLOT):
            # Padded batch entry: zeros out, no slot read or written; new tensors get zeros too.
            t = bos
            while t < eos:
                tl.store(
                    o + t * stride_o + i_hv * V + o_v, tl.zeros([BV], dtype=o.dtype.element_ty), mask=m_v
                )
                if TOKEN_MODE == 2:  # TOKENS_TO_ROWS
                    tl.store(
                        hs + t * stride_hs + o_h, tl.zeros([BK, BV], dtype=hs.dtype.element_ty), mask=m_h
                    )
                t += 1
            if FINAL_MODE == 1:  # FINAL_NEW
                tl.store(
                    ht + i_n.to(tl.int64) * state_size + o_h,
                    tl.zeros([BK, BV], dtype=ht.dtype.element_ty),
                    mask=m_h,
                )
            return
    else:
        i_slot = i_n.to(tl.int64)

    b_a_log = 0.0
    b_dt_bias = 0.0
    if USE_GATE:
        b_a_log = tl.load(A_log + i_hv).to(tl.float32)
        b_dt_bias = tl.load(dt_bias + i_hv).to(tl.float32)

    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_INITIAL_STATE:
        b_h += tl.load(h0 + i_slot * stride_h0 + o_h, mask=m_h, other=0.0).to(tl.float32)

    if INTERPRETED:
        t = bos
        while t < eos:
            b_h = _token_step(
                b_h,
                t - bos,
                t,
                i_n,
                q,
                k,
                v,
                g,
                beta,
                o,
                hs,
                state_indices,
                buffer_rows,
                b_a_log,
                b_dt_bias,
                scale,
                softplus_beta,
                softplus_threshold,
                stride_q,
                stride_k,
                stride_v,
                stride_o,
                stride_g,
                stride_beta,
                stride_hs,
                stride_indices,
                slot_columns,
                buffer_tokens,
                i_h,
                i_hv,
                o_k,
                o_v,
                o_h,
                HV,
                K,
                V,
                USE_QK_L2NORM,
                USE_GATE,
                USE_BETA_SIGMOID,
                TOKEN_MODE,
                NULL_SLOT,
            )
            t += 1
    else:
        for t in range(bos, eos):
            b_h = _token_step(
                b_h,
                t - bos,
                t,
                i_n,
                q,
                k,
                v,
                g,
                beta,
                o,
                hs,
                state_indices,
                buffer_rows,
                b_a_log,
                b_dt_bias,
                scale,
                softplus_beta,
                softplus_threshold,
                stride_q,
                stride_k,
                stride_v,
                stride_o,
                stride_g,
                stride_beta,
                stride_hs,
                stride_indices,
                slot_columns,
                buffer_tokens,
                i_h,
                i_hv,
                o_k,
                o_v,
                o_h,
                HV,
                K,
                V,
                USE_QK_L2NORM,
                USE_GATE,
                USE_BETA_SIGMOID,
                TOKEN_MODE,
                NULL_SLOT,
            )

    if FINAL_MODE == 1:  # FINAL_NEW
        tl.store(ht + i_n.to(tl.int64) * state_size + o_h, b_h.to(ht.dtype.element_ty), mask=m_h)
    elif FINAL_MODE == 2:  # FINAL_IN_PLACE
        tl.store(h0 + i_slot * stride_h0 + o_h, b_h.to(h0.dtype.element_ty), mask=m_h)


@dataclass(frozen=True)
class DecodeVariant:
    """What a decode call does beyond the plain recurrence; one KernelSpec (and table) per variant."""

    gate_in_kernel: bool = False  # g and beta from the raw a, b with A_log, dt_bias (vLLM, SGLang)
    packed: bool = False  # q, k, v are views into one [tokens, 2·H·K + HV·V] projection
    speculative: bool = False  # several draft tokens per sequence, a state per token


def _key(
    spec: KernelSpec,
    dtype: torch.dtype | str,
    H: int,
    HV: int,
    K: int,
    V: int,
    sequences: int,
    state_dtype: torch.dtype | str,
    state_layout: str,
    tokens_per_sequence: int = 1,
) -> Key:
    state_dtype = str(state_dtype).removeprefix("torch.")
    if spec is SPEC_SPECULATIVE:
        return spec.memoised_key(
            dtype,
            H,
            HV,
            K,
            V,
            sequence_bucket(sequences),
            sequence_bucket(tokens_per_sequence),
            state_dtype,
            state_layout,
        )
    return spec.memoised_key(dtype, H, HV, K, V, sequence_bucket(sequences), state_dtype, state_layout)


def _token_stride(x: torch.Tensor) -> int:
    """The stride between consecutive tokens of x [B,T,...], whose rows the kernel indexes b·T + t."""
    B, T = x.shape[:2]
    return x.stride(1) if B == 1 or T > 1 else x.stride(0)


def _run(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    o: torch.Tensor,
    initial_state: torch.Tensor | None,
    final_state: torch.Tensor | None,
    token_states: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    state_indices: torch.Tensor | None,
    num_accepted_tokens: torch.Tensor | None,
    buffer_rows: torch.Tensor | None,
    A_log: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
    scale: float,
    softplus_beta: float,
    softplus_threshold: float,
    final_mode: int,
    token_mode: int,
    state_vk: bool,
    null_slot: int,
    use_qk_l2norm: bool,
    use_beta_sigmoid: bool,
    config: Config,
) -> None:
    """Launches the kernel on validated arguments. Positional and flat: this runs on every decode step."""
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    launch(
        _fused_recurrent_kernel,
        (N * HV, cdiv(V, config["BV"])),
        config,
        q=q,
        k=k,
        v=v,
        g=g,
        beta=beta,
        o=o,
        h0=initial_state,
        ht=final_state,
        hs=token_states,
        cu_seqlens=cu_seqlens,
        state_indices=state_indices,
        num_accepted_tokens=num_accepted_tokens,
        buffer_rows=buffer_rows,
        A_log=A_log,
        dt_bias=dt_bias,
        scale=scale,
        softplus_beta=softplus_beta,
        softplus_threshold=softplus_threshold,
        T=T,
        # Token strides: q, k, v may be views into one fused projection (heads packed, last dim dense).
        stride_q=_token_stride(q),
        stride_k=_token_stride(k),
        stride_v=_token_stride(v),
        stride_o=_token_stride(o),
        stride_g=_token_stride(g),
        stride_beta=_token_stride(beta),
        stride_h0=initial_state.stride(0) if initial_state is not None else 0,
        # The stride between the states of consecutive slots, tokens or (buffer) draft tokens.
        stride_hs=0
        if token_states is None
        else token_states.stride(1 if token_mode == TOKENS_TO_BUFFER else 0),
        stride_indices=state_indices.stride(0) if state_indices is not None else 0,
        slot_columns=state_indices.shape[1] if state_indices is not None and state_indices.dim() == 2 else 1,
        buffer_tokens=token_states.shape[1] if token_mode == TOKENS_TO_BUFFER else 0,
        H=H,
        HV=HV,
        K=K,
        V=V,
        BK=pow2_ceil(K),
        USE_INITIAL_STATE=initial_state is not None,
        FINAL_MODE=final_mode,
        TOKEN_MODE=token_mode,
        IS_VARLEN=cu_seqlens is not None,
        USE_STATE_INDICES=state_indices is not None,
        USE_ACCEPTED_TOKENS=num_accepted_tokens is not None,
        USE_QK_L2NORM=use_qk_l2norm,
        USE_GATE=A_log is not None,
        USE_BETA_SIGMOID=use_beta_sigmoid,
        STATE_VK=state_vk,
        NULL_SLOT=null_slot,
        INTERPRETED=INTERPRETED,
    )


def _launch_spec(inputs: dict, outputs: dict, config: Config) -> None:
    """The tuner's launch: the inputs' flags name the variant; outputs hold o, final_state or token_states."""
    scale = inputs.get("scale")
    token_states = outputs.get("token_states")
    _run(
        inputs["q"],
        inputs["k"],
        inputs["v"],
        inputs["g"],
        inputs["beta"],
        outputs["o"],
        inputs.get("initial_state"),
        outputs.get("final_state"),
        token_states,
        inputs.get("cu_seqlens"),
        inputs.get("ssm_state_indices"),
        inputs.get("num_accepted_tokens"),
        None,
        inputs.get("A_log"),
        inputs.get("dt_bias"),
        inputs["q"].shape[3] ** -0.5 if scale is None else float(scale),
        1.0,
        20.0,
        FINAL_NEW if "final_state" in outputs else FINAL_NONE,
        TOKENS_TO_ROWS if token_states is not None else TOKENS_NONE,
        inputs.get("state_layout", "kv") == "vk",
        -1,
        bool(inputs.get("use_qk_l2norm_in_kernel", False)),
        bool(inputs.get("use_beta_sigmoid_in_kernel", False)),
        config,
    )


_FLOAT16_32 = (torch.bfloat16, torch.float16, torch.float32)
_INDEX_DTYPES = (torch.int32, torch.int64)
_NAME = "fused_recurrent_gated_delta_rule"


def _rows_mergeable(x: torch.Tensor) -> torch.Tensor:
    """x [B,T,...] itself when its inner dims are dense and its rows are addressable as (b·T + t)·stride,
    else a contiguous copy."""
    if x.is_contiguous():
        return x
    B, T = x.shape[:2]
    inner = x[0, 0] if B and T else x
    if inner.is_contiguous() and (B == 1 or T == 1 or x.stride(0) == T * x.stride(1)):
        return x
    return x.contiguous()


def _state_shape(layout: str, rows: int, HV: int, K: int, V: int) -> tuple[int, ...]:
    return (rows, HV, K, V) if layout == "kv" else (rows, HV, V, K)


def _check_state(
    arg: str, state: torch.Tensor, layout: str, HV: int, K: int, V: int, rows: int | None, what: str
) -> None:
    want = "[.., HV, K, V]" if layout == "kv" else "[.., HV, V, K]"
    inner = _state_shape(layout, 0, HV, K, V)[1:]
    if state.dim() != 4 or tuple(state.shape[1:]) != inner or (rows is not None and state.shape[0] != rows):
        rows_text = f"{rows}" if rows is not None else what
        raise ValueError(
            f"{_NAME}: {arg} must be [{rows_text}, {', '.join(map(str, inner))}] (state_layout={layout!r}: "
            f"{want}), got {tuple(state.shape)}"
        )
    if state.dtype not in STATE_DTYPES:
        raise ValueError(f"{_NAME}: {arg} must be float32, bfloat16 or float16, got {state.dtype}")
    if state.shape[0] and not state[0].is_contiguous():
        raise ValueError(f"{_NAME}: each slot of {arg} must be contiguous (strides {state.stride()})")


def _check_index(arg: str, x: torch.Tensor, shapes: tuple[tuple[int, ...], ...]) -> None:
    if x.dtype not in _INDEX_DTYPES or tuple(x.shape) not in shapes or (x.dim() == 2 and x.stride(1) != 1):
        want = " or ".join(str(list(s)) for s in shapes)
        raise ValueError(
            f"{_NAME}: {arg} must be int32/int64 {want} (rows dense), got {x.dtype} {tuple(x.shape)}"
        )


def _check(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    ssm_state_indices: torch.Tensor | None,
    inplace_final_state: bool,
    state_layout: str,
    num_accepted_tokens: torch.Tensor | None,
    use_gate_in_kernel: bool,
    A_log: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
) -> int:
    """Validates the arguments without touching device memory; returns the number of sequences N."""
    name = _NAME
    if state_layout not in LAYOUTS:
        raise ValueError(
            f"{name}: state_layout must be 'kv' ([.., K, V]) or 'vk' ([.., V, K]), got {state_layout!r}"
        )
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(
            f"{name}: q and k must be [B,T,H,K] of one shape, got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    B, T, H, K = q.shape
    if v.dim() != 4 or v.shape[:2] != q.shape[:2]:
        raise ValueError(f"{name}: v must be [B,T,HV,V] with q's B, T = {B}, {T}, got {tuple(v.shape)}")
    HV, V = v.shape[2], v.shape[3]
    if H == 0 or HV == 0 or HV % H:
        raise ValueError(f"{name}: v's head count HV={HV} must be a positive multiple of q's H={H}")
    if not (1 <= K <= MAX_HEAD_DIM and V >= 1):
        raise ValueError(f"{name}: head dim K must be in 1..{MAX_HEAD_DIM} and V ≥ 1, got K={K}, V={V}")
    if q.dtype not in _FLOAT16_32 or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(
            f"{name}: q, k, v must share one dtype of bfloat16, float16, float32; got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    g_name = "g (the raw gate a, use_gate_in_kernel=True)" if use_gate_in_kernel else "g"
    if g.shape != (B, T, HV) or beta.shape != (B, T, HV):
        raise ValueError(
            f"{name}: {g_name} and beta must be [B,T,HV] = {(B, T, HV)}, got {tuple(g.shape)} and {tuple(beta.shape)}"
        )
    if not g.is_floating_point() or not beta.is_floating_point():
        raise ValueError(f"{name}: {g_name} and beta must be floating point, got {g.dtype} and {beta.dtype}")
    if use_gate_in_kernel:
        for arg, t in (("A_log", A_log), ("dt_bias", dt_bias)):
            if t is None or t.shape != (HV,) or not t.is_floating_point():
                got = None if t is None else f"{t.dtype} {tuple(t.shape)}"
                raise ValueError(
                    f"{name}: use_gate_in_kernel=True needs {arg} as a float [HV={HV}] tensor, got {got}"
                )
    elif A_log is not None or dt_bias is not None:
        raise ValueError(f"{name}: A_log and dt_bias are used only with use_gate_in_kernel=True")
    N = B
    if cu_seqlens is not None:
        N = _varlen.check_cu_seqlens(cu_seqlens, T, name, q.device)  # values too, where on the host
        if B != 1:
            raise ValueError(f"{name}: with cu_seqlens the batch size B must be 1, got {B}")
    if ssm_state_indices is not None:
        if initial_state is None:
            raise ValueError(f"{name}: ssm_state_indices needs initial_state (the state cache it indexes)")
        columns = ssm_state_indices.shape[1] if ssm_state_indices.dim() == 2 else 1
        _check_index("ssm_state_indices", ssm_state_indices, ((N,), (N, columns)))
    if num_accepted_tokens is not None:
        if ssm_state_indices is None or ssm_state_indices.dim() != 2:
            raise ValueError(f"{name}: num_accepted_tokens needs 2-D ssm_state_indices [N, tokens]")
        _check_index("num_accepted_tokens", num_accepted_tokens, ((N,),))
        if num_accepted_tokens.device.type == "cpu" and num_accepted_tokens.numel():
            # Known on the host: checked here; on the device it stays unchecked (that would sync).
            most, least = int(num_accepted_tokens.max()), int(num_accepted_tokens.min())
            if least < 1 or most > ssm_state_indices.shape[1]:
                raise ValueError(
                    f"{name}: num_accepted_tokens must be in 1..{ssm_state_indices.shape[1]} (the columns of "
                    f"ssm_state_indices), got values in {least}..{most}"
                )
    if initial_state is not None:
        rows = None if ssm_state_indices is not None else N
        _check_state("initial_state", initial_state, state_layout, HV, K, V, rows, "slots")
    elif inplace_final_state:
        raise ValueError(f"{name}: inplace_final_state=True needs initial_state to write into")
    return N


def fused_recurrent_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    use_qk_l2norm_in_kernel: bool = False,
    ssm_state_indices: torch.Tensor | None = None,
    inplace_final_state: bool = False,
    *,
    state_layout: str = "kv",
    num_accepted_tokens: torch.Tensor | None = None,
    state_per_token: bool = False,
    intermediate_states: torch.Tensor | None = None,
    intermediate_state_indices: torch.Tensor | None = None,
    use_gate_in_kernel: bool = False,
    A_log: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    use_beta_sigmoid_in_kernel: bool = False,
    softplus_beta: float = 1.0,
    softplus_threshold: float = 20.0,
    null_slot: int | None = None,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated delta rule for decode (one or a few tokens per sequence) → (o [B,T,HV,V], final_state).

    q, k [B,T,H,K]; v [B,T,HV,V] (HV a multiple of H, one dtype; token strides free, heads and head
    dims dense, so views into one fused projection need no copy); g [B,T,HV] log decay; beta [B,T,HV];
    with cu_seqlens (int32/int64 [N+1]) B must be 1, else N = B.

    States: [.., HV, K, V] for state_layout="kv" (the default), [.., HV, V, K] for "vk" (vLLM's and
    SGLang's caches); float32, bfloat16 or float16 (arithmetic is float32 inside). A [K, V] state
    passed as "vk" cannot be told apart when K = V: name the layout the cache really has.
    initial_state is [N,HV,..], or with ssm_state_indices a cache [slots,HV,..] (each slot dense, the
    slot stride free). ssm_state_indices [N] names sequence n's slot; [N, S] (speculative decoding)
    names one slot per token: the state is read from column num_accepted_tokens[n] − 1 (column 0
    without it) and, with inplace_final_state, the state after token t is written to column t's slot.
    An index < 0, or equal to null_slot, marks a padded entry: zeros out, no slot read or written.
    Slots must be in range and distinct (not checked: that would synchronise).

    Gates: use_gate_in_kernel takes g as the raw a and computes g = −exp(A_log)·softplus(a + dt_bias)
    (A_log, dt_bias [HV]; softplus with softplus_beta, linear past softplus_threshold);
    use_beta_sigmoid_in_kernel takes beta as the raw b and uses sigmoid(b).

    final_state: with inplace_final_state, initial_state itself, updated in place; else with
    state_per_token a new [B·T,HV,..] holding the state after every token; else with
    output_final_state a new [N,HV,..] (zeros for padded entries); else None. New states have
    initial_state's dtype (float32 without one). intermediate_states [M,S,HV,..] with
    intermediate_state_indices [N] receives the state after token t of sequence n at [rows[n], t]
    (t < S; a negative row writes nothing). o has q's dtype; `out` (o's shape, any float dtype,
    heads dense) is written instead of a new tensor. num_accepted_tokens outside 1..S on the device
    marks its entry padded (on the host it is an error).
    """
    N = _check(
        q, k, v, g, beta, initial_state, cu_seqlens, ssm_state_indices, inplace_final_state,
        state_layout, num_accepted_tokens, use_gate_in_kernel, A_log, dt_bias,
    )  # fmt: skip
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    state_dtype = initial_state.dtype if initial_state is not None else torch.float32
    speculative = ssm_state_indices is not None and ssm_state_indices.dim() == 2
    final_mode, token_mode, token_states = FINAL_NONE, TOKENS_NONE, None
    if inplace_final_state:
        final_state = initial_state
        if speculative:
            token_mode, token_states = TOKENS_TO_SLOTS, initial_state
        else:
            final_mode = FINAL_IN_PLACE
    elif state_per_token:
        final_state = torch.empty(
            _state_shape(state_layout, B * T, HV, K, V), dtype=state_dtype, device=q.device
        )
        token_mode, token_states = TOKENS_TO_ROWS, final_state
    elif output_final_state:
        final_state = torch.empty(_state_shape(state_layout, N, HV, K, V), dtype=state_dtype, device=q.device)
        final_mode = FINAL_NEW
    else:
        final_state = None
    if intermediate_states is not None:
        if token_mode != TOKENS_NONE:
            raise ValueError(
                f"{_NAME}: intermediate_states cannot be combined with state_per_token or 2-D in-place slots"
            )
        _check_state(
            "intermediate_states", intermediate_states.flatten(0, 1), state_layout, HV, K, V, None, "M·S"
        )
        if intermediate_states.dtype != state_dtype or not intermediate_states.is_contiguous():
            raise ValueError(
                f"{_NAME}: intermediate_states must be contiguous {state_dtype} (the states' dtype), "
                f"got {intermediate_states.dtype}"
            )
        if intermediate_state_indices is None:
            raise ValueError(f"{_NAME}: intermediate_states needs intermediate_state_indices [N={N}]")
        _check_index("intermediate_state_indices", intermediate_state_indices, ((N,),))
        token_mode, token_states = TOKENS_TO_BUFFER, intermediate_states
    if out is not None:
        # Any float dtype: vLLM keeps o in float32 beside a float32 cache (16-bit o overflowed there).
        if out.shape != v.shape or out.dtype not in _FLOAT16_32:
            raise ValueError(
                f"{_NAME}: out must be a float {tuple(v.shape)} tensor, got {out.dtype} {tuple(out.shape)}"
            )
        if _rows_mergeable(out) is not out:
            raise ValueError(f"{_NAME}: out's heads and head dims must be dense (strides {out.stride()})")
        o = out
    else:
        o = torch.empty((B, T, HV, V), dtype=q.dtype, device=q.device)
    if N:
        q, k, v, g, beta = (_rows_mergeable(x) for x in (q, k, v, g, beta))
        if A_log is not None:
            A_log, dt_bias = A_log.contiguous(), dt_bias.contiguous()
        # Packed: q, k, v are views of one projection (at one token no stride tells it, the base does).
        packed = q._base is not None and q._base is k._base and k._base is v._base
        spec = _spec_of(use_gate_in_kernel, packed, speculative)
        key = _key(spec, q.dtype, H, HV, K, V, N, state_dtype, state_layout, cdiv(B * T, N))
        # Zero tokens still launch: each program then copies its initial state to final_state.
        _run(
            q,
            k,
            v,
            # One compiled variant for the log decay: float32 (a 16-bit one is cast). The raw gate a
            # keeps its dtype: engines pass it in the model's dtype.
            g if use_gate_in_kernel or g.dtype == torch.float32 else g.float(),
            beta,
            o,
            initial_state,
            final_state if final_mode == FINAL_NEW else None,
            token_states,
            cu_seqlens,
            ssm_state_indices,
            num_accepted_tokens,
            intermediate_state_indices if token_mode == TOKENS_TO_BUFFER else None,
            A_log,
            dt_bias,
            K**-0.5 if scale is None else float(scale),
            float(softplus_beta),
            float(softplus_threshold),
            final_mode,
            token_mode,
            state_layout == "vk",
            -1 if null_slot is None else int(null_slot),
            use_qk_l2norm_in_kernel,
            use_beta_sigmoid_in_kernel,
            resolve_config(spec, key, q.device),
        )
    return o, final_state


def _gates_reference(inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 (g, beta) of the inputs, computing them from the raw a, b when the kernel does."""
    g, beta = inputs["g"].to(torch.float64), inputs["beta"].to(torch.float64)
    A_log = inputs.get("A_log")
    if A_log is not None:
        x = g + inputs["dt_bias"].to(torch.float64)
        bx = inputs.get("softplus_beta", 1.0) * x
        softplus = torch.where(
            bx <= inputs.get("softplus_threshold", 20.0),
            torch.log1p(torch.exp(bx)) / inputs.get("softplus_beta", 1.0),
            x,
        )
        g = -torch.exp(A_log.to(torch.float64)) * softplus
    if inputs.get("use_beta_sigmoid_in_kernel"):
        beta = torch.sigmoid(beta)
    return g, beta


def fused_recurrent_reference(inputs: dict) -> dict[str, torch.Tensor]:
    """float64 o and final_state (or, with state_per_token, every token's state) of `inputs`, following
    the state layout, ssm_state_indices (1-D or speculative 2-D with num_accepted_tokens) and padding."""
    q, v, pool = inputs["q"], inputs["v"], inputs.get("initial_state")
    cu_seqlens, indices = inputs.get("cu_seqlens"), inputs.get("ssm_state_indices")
    vk = inputs.get("state_layout", "kv") == "vk"
    N = q.shape[0] if cu_seqlens is None else cu_seqlens.numel() - 1
    if pool is not None and vk:
        pool = pool.transpose(-1, -2)
    padded = torch.zeros(N, dtype=torch.bool)
    initial_state = pool
    if indices is not None:
        slots = indices.to(device="cpu", dtype=torch.int64)
        if slots.dim() == 2:
            accepted = inputs.get("num_accepted_tokens")
            columns = torch.zeros(N, dtype=torch.int64) if accepted is None else accepted.cpu().long() - 1
            slots = slots[torch.arange(N), columns]
        null_slot = inputs.get("null_slot")
        padded = (slots < 0) | (slots == (-1 if null_slot is None else null_slot))
        initial_state = pool[slots.clamp(min=0).to(pool.device)]
    g, beta = _gates_reference(inputs)
    token_states: list[torch.Tensor] = []
    o, final_state = gated_delta_rule_reference(
        q,
        inputs["k"],
        v,
        g,
        beta,
        scale=inputs.get("scale"),
        initial_state=initial_state,
        cu_seqlens=cu_seqlens,
        use_qk_l2norm=bool(inputs.get("use_qk_l2norm_in_kernel", False)),
        token_states=token_states,
    )
    B, T = q.shape[:2]
    states = torch.stack(token_states) if token_states else final_state.new_zeros(0, *final_state.shape[1:])
    bounds = (
        [(n * T, n * T + T) for n in range(B)]
        if cu_seqlens is None
        else list(zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist(), strict=True))
    )
    for n in padded.nonzero().flatten().tolist():
        final_state[n] = 0
        start, end = bounds[n]
        o.view(B * T, *o.shape[2:])[start:end] = 0
        states[start:end] = 0
    if vk:
        final_state, states = final_state.transpose(-1, -2), states.transpose(-1, -2)
    if inputs.get("state_per_token"):
        return {"o": o, "token_states": states}
    return {"o": o, "final_state": final_state}


def _make_inputs(variant: DecodeVariant, key: Key, device: torch.device | str, seed: int) -> dict:
    """A serving engine's decode step: one token (a few draft tokens when speculative) for each of N
    sequences whose states sit in shuffled slots of a cache twice that size (so reads are gathered, as
    in production), in the key's state dtype and layout."""
    gen = torch.Generator("cpu").manual_seed(seed)
    H, HV, K, V, N = key["H"], key["HV"], key["K"], key["V"], key["N"]
    S = key["S"] if variant.speculative else 1
    dtype, state_dtype = getattr(torch, key["dtype"]), getattr(torch, key["state_dtype"])
    T = N * S
    if variant.packed:
        # vLLM's packed decode: q, k, v are column blocks of one [tokens, 2·H·K + HV·V] projection.
        mixed = randn(T, 2 * H * K + HV * V, generator=gen, device=device).to(dtype)
        q = mixed[:, : H * K].unflatten(1, (H, K))[None]
        k = mixed[:, H * K : 2 * H * K].unflatten(1, (H, K))[None]
        v = mixed[:, 2 * H * K :].unflatten(1, (HV, V))[None]
        cpu = {}
    else:
        cpu = {
            "q": randn(1, T, H, K, generator=gen, device=device).to(dtype),
            "k": randn(1, T, H, K, generator=gen, device=device).to(dtype),
            "v": randn(1, T, HV, V, generator=gen, device=device).to(dtype),
        }
    if variant.gate_in_kernel:
        # The raw a, b of the model's projection (its dtype) and the layer's A_log, dt_bias.
        cpu["g"] = randn(1, T, HV, generator=gen, device=device).to(dtype)
        cpu["beta"] = randn(1, T, HV, generator=gen, device=device).to(dtype)
        cpu["A_log"] = (
            torch.log(1 + 15 * torch.rand(HV, generator=gen))
            if torch.device(device).type != "meta"
            else torch.empty(HV, device="meta")
        )
        cpu["dt_bias"] = 0.5 * randn(HV, generator=gen, device=device)
    else:
        cpu["g"] = torch.nn.functional.logsigmoid(randn(1, T, HV, generator=gen, device=device))
        cpu["beta"] = torch.sigmoid(randn(1, T, HV, generator=gen, device=device))
    slots = 2 * T
    cpu["cu_seqlens"] = torch.arange(0, T + 1, S, dtype=torch.int32)
    order = torch.randperm(slots, generator=gen)[:T].to(torch.int32)
    cpu["ssm_state_indices"] = order.view(N, S) if variant.speculative else order
    if variant.speculative:
        cpu["num_accepted_tokens"] = torch.randint(1, S + 1, (N,), generator=gen, dtype=torch.int32)
    inputs = {name: t.to(device) for name, t in cpu.items()}
    if variant.packed:
        inputs.update(q=q.to(device), k=k.to(device), v=v.to(device))
    # The cache is the one large input (4.3 GB at N=512, HV=64, K=V=128 in float32): drawn where it
    # lives, with a generator seeded the same way, rather than on the host and copied.
    state_shape = _state_shape(key["state_layout"], slots, HV, K, V)
    if torch.device(device).type == "meta":
        inputs["initial_state"] = torch.empty(state_shape, dtype=state_dtype, device="meta")
    else:
        device_gen = torch.Generator(device).manual_seed(seed)
        # States of a running decode have entries of order 0.1 (column norms near one at K = 128).
        inputs["initial_state"] = (0.1 * torch.randn(state_shape, generator=device_gen, device=device)).to(
            state_dtype
        )
    # The in-kernel l2norm is how serving engines call decode; states go to outputs of their own (not
    # in place) so that repeated launches of one input see the same state.
    inputs["use_qk_l2norm_in_kernel"] = True
    inputs["use_beta_sigmoid_in_kernel"] = variant.gate_in_kernel
    inputs["state_layout"] = key["state_layout"]
    inputs["state_per_token"] = variant.speculative
    return inputs


def _make_outputs(inputs: dict) -> dict[str, torch.Tensor]:
    q, v, pool = inputs["q"], inputs["v"], inputs.get("initial_state")
    state_dtype = torch.float32 if pool is None else pool.dtype
    N = q.shape[0] if inputs.get("cu_seqlens") is None else inputs["cu_seqlens"].shape[0] - 1
    B, T = q.shape[:2]
    HV, K, V = v.shape[2], q.shape[3], v.shape[3]
    rows, name = (B * T, "token_states") if inputs.get("state_per_token") else (N, "final_state")
    return {
        "o": torch.empty(v.shape, dtype=q.dtype, device=q.device),
        name: torch.empty(
            _state_shape(inputs.get("state_layout", "kv"), rows, HV, K, V), dtype=state_dtype, device=q.device
        ),
    }


def _state_bytes(key: Key, states_per_sequence: int) -> int:
    """Bytes of the states read and written: what bounds decode (q, k, v, gates are under 0.1 %)."""
    itemsize = torch.empty(0, dtype=getattr(torch, key["state_dtype"])).element_size()
    return states_per_sequence * itemsize * key["N"] * key["HV"] * key["K"] * key["V"]


def _decode_spec(name: str, doc: str, variant: DecodeVariant, phase: str) -> KernelSpec:
    fields = (
        "dtype",
        "H",
        "HV",
        "K",
        "V",
        "N",
        *(("S",) if variant.speculative else ()),
        "state_dtype",
        "state_layout",
    )
    return KernelSpec(
        name=name,
        doc=doc,
        key_fields=fields,
        space=SPACE,
        default=DEFAULT,
        jit_functions=(_fused_recurrent_kernel, _token_step, _is_padding),
        key_for=lambda w: _key(
            _spec_of(variant.gate_in_kernel, variant.packed, variant.speculative),
            w.dtype,
            w.H,
            w.HV,
            w.K,
            w.V,
            w.sequences,
            w.state_dtype,
            w.state_layout,
            cdiv(w.tokens, max(1, w.sequences)),
        ),
        make_inputs=partial(_make_inputs, variant),
        make_outputs=_make_outputs,
        launch=_launch_spec,
        reference=fused_recurrent_reference,
        phases=(phase,),
        # One state read and one written per sequence; speculative: one read and S written.
        bytes_moved=lambda key: _state_bytes(key, 1 + (key["S"] if variant.speculative else 1)),
    )


SPEC = _decode_spec("fused_recurrent", __doc__.splitlines()[0], DecodeVariant(), "decode")
SPEC_GATED = _decode_spec(
    "fused_recurrent_gated",
    "Decode with the gates computed in the kernel from a, b, A_log, dt_bias (vLLM's and SGLang's decode).",
    DecodeVariant(gate_in_kernel=True),
    "decode_gated",
)
SPEC_PACKED = _decode_spec(
    "packed_decode",
    "Decode on q, k, v read in place from the fused [tokens, 2·H·K + HV·V] projection, gates in the kernel.",
    DecodeVariant(gate_in_kernel=True, packed=True),
    "decode_packed",
)
SPEC_SPECULATIVE = _decode_spec(
    "spec_decode",
    "Speculative decoding: S draft tokens per sequence, the state after each token kept, gates in the kernel.",
    DecodeVariant(gate_in_kernel=True, speculative=True),
    "spec_decode",
)
SPECS = (SPEC, SPEC_GATED, SPEC_PACKED, SPEC_SPECULATIVE)


def _spec_of(gated: bool, packed: bool, speculative: bool) -> KernelSpec:
    """The spec (and so the table) a call resolves its config from: every speculative call shares
    spec_decode's, whatever its gates; packed q, k, v count only with the gates in the kernel (vLLM's
    packed decode)."""
    if speculative:
        return SPEC_SPECULATIVE
    if not gated:
        return SPEC
    return SPEC_PACKED if packed else SPEC_GATED
